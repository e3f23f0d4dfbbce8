"""The quick start as a new user meets it: `mm1 run workflows/quickstart.yaml` from a fresh run folder.

Runs the command as a subprocess (its console passes through) and prints:
- wall time from the start of the command to a healthy endpoint (the deploy step's "[deploy] healthy" line)
  and to its end;
- each step's wall time (from its manifest);
- per training stage: mean tokens/s and CPU MFU over the logged steps after the first (the first includes
  start-up), MFU against the peak the training loop measured (mm1.train.mfu);
- the winner's held-out scores per Shapes question type beside each type's majority baseline (the kind splits
  count_kind.present/uniform and exists.present/uniform included), and the mean of colour_of, shape_of,
  exists and count_all (issue 18's target: 0.85 or more, every type above its baseline).

    .venv/bin/python benchmarks/quickstart.py [--workflow workflows/quickstart.yaml] [KEY=VALUE ...]
    .venv/bin/python benchmarks/quickstart.py --seeds 0,1,2 [KEY=VALUE ...]   # a recipe over training draws

Training is reproducible (the same rows in the same order, seeded initial weights), so a run of one recipe
on one machine gives the same scores every time, and a single run says only how that one training draw
went. `--seeds` runs the quick start once per seed (`pretrain.seed` and `sft.seed`; the corpus stays the
same), one after the other in `ROOT/seed-S`, and ends with each type's score per seed, mean and minimum
beside its baseline: compare recipes over several seeds, not on one.

It also probes the CPU's fp32 matmul speed before and after the run, beside the best probe kept on this
machine (mm1.train.mfu): a shared or throttled machine's speed drifts (330 vs 407 GFLOP/s within one day
here), and every time above scales with it, so a wall time is read beside its probe.

The endpoint is taken down at the end (deploy.keep_serving=false) on a free port; the run folder is a fresh
temporary one unless --root names one (then finished steps are skipped, as for any rerun).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mm1.config import load  # noqa: E402
from mm1.train.mfu import cpu_peak_flops, measure_cpu_peak_flops  # noqa: E402
from mm1.workflow.steps import STEP_NAMES  # noqa: E402

TARGET_TYPES = ("colour_of", "shape_of", "exists", "count_all")
HEALTHY = "[deploy] healthy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(workflow: Path, root: str, overrides: list[str]) -> tuple[float, float | None, int]:
    """(wall seconds, seconds to a healthy endpoint or None, exit code); the console passes through."""
    command = [sys.executable, "-m", "mm1.cli", "run", str(workflow), f"storage.root={root}", *overrides]
    started = time.perf_counter()
    healthy = None
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            if healthy is None and HEALTHY in line:
                healthy = time.perf_counter() - started
        code = proc.wait()
    return time.perf_counter() - started, healthy, code


def training_figures(manifest: dict) -> tuple[float | None, float | None, int]:
    """Mean tokens/s and MFU over the logged steps after each run's first; the number of steps averaged."""
    tokens, mfus = [], []
    for entry in manifest["outputs"]["runs"].values():
        rows = [json.loads(line) for line in Path(entry["metrics"]).read_text().splitlines() if line]
        for row in rows[1:]:
            if row.get("tokens_per_s") is not None:
                tokens.append(row["tokens_per_s"])
            if row.get("mfu") is not None:
                mfus.append(row["mfu"])
    mean = lambda xs: statistics.fmean(xs) if xs else None  # noqa: E731
    return mean(tokens), mean(mfus), len(tokens)


@dataclass
class QuickstartResult:
    """One run's figures: seconds to a healthy endpoint (None without one) and the winner's held-out score
    and majority baseline per Shapes question type (kind splits included)."""

    seed: int | None
    healthy_s: float | None
    scores: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)


def measure(workflow: Path, root: str, overrides: list[str], seed: int | None) -> QuickstartResult:
    """Run the quick start once in `root` and print its report (see the module docstring)."""
    if seed is not None:  # a training draw of its own: initial weights, row-group order, shuffles
        overrides = [*overrides, f"pretrain.seed={seed}", f"sft.seed={seed}"]
    wf = load(workflow, [f"storage.root={root}", *overrides])
    speed_before = measure_cpu_peak_flops(repeats=10)
    wall, healthy, code = run(workflow, root, overrides)
    speed_after = measure_cpu_peak_flops(repeats=10)
    best_speed = cpu_peak_flops()  # the best kept on this machine (this call's own probe included)
    if code:
        raise SystemExit(f"mm1 run failed (exit {code}); the run folder is {root}/{wf.run_name}")
    run_dir = Path(root) / wf.run_name
    manifests = {
        step: json.loads((run_dir / step / "manifest.json").read_text())
        for step in STEP_NAMES
        if (run_dir / step / "manifest.json").exists()
    }
    result = QuickstartResult(seed, healthy)

    print(
        f"\n== {workflow.name} on a fresh run folder ({run_dir})"
        + (f", seed {seed}" if seed is not None else "")
    )
    print(f"wall to a healthy endpoint: {healthy:.1f} s" if healthy else "no healthy endpoint (deploy off?)")
    print(f"wall to the end of the command: {wall:.1f} s")
    print(
        f"CPU fp32 matmul probe: {speed_before / 1e9:.0f} GFLOP/s before, {speed_after / 1e9:.0f} after; "
        f"best seen on this machine {best_speed / 1e9:.0f} (times scale with it)"
    )
    print("\nstep       seconds")
    for step, manifest in manifests.items():
        print(f"{step:<10} {manifest['duration_s']:>7.1f}")
    print("\nstage      tokens/s   CPU MFU   (mean over logged steps after the first)")
    for stage in ("pretrain", "sft"):
        if stage in manifests and manifests[stage]["outputs"].get("runs"):
            tokens, mfu, n = training_figures(manifests[stage])
            mfu_text = f"{100 * mfu:6.2f}%" if mfu is not None else "   n/a"
            print(f"{stage:<10} {tokens or 0:>8.0f}   {mfu_text}   ({n} steps)")

    if "evaluate" not in manifests or "select" not in manifests:
        return result
    evaluation = manifests["evaluate"]["outputs"]
    winner = manifests["select"]["outputs"]["winner"]
    (row,) = [
        r
        for r in evaluation["results"]
        if r["candidate"] == winner["candidate"] and r["checkpoint"] == winner["checkpoint"]
    ]
    baselines = evaluation["baseline"]["metrics"]
    print(f"\nwinner {winner['candidate']} (step {row['step']}): held-out score vs majority baseline")
    print(f"{'type':<26} {'score':>6} {'baseline':>9}")
    for key in sorted(k for k in row["metrics"] if k.startswith("shapes-vqa/")):
        name, base = key.removeprefix("shapes-vqa/"), baselines.get(key)
        result.scores[name] = row["metrics"][key]
        if base is not None:
            result.baselines[name] = base
        base_text = f"{base:>9.3f}" if base is not None else f"{'':>9}"
        flag = "" if base is None or row["metrics"][key] > base else "   <= baseline"
        print(f"{name:<26} {row['metrics'][key]:>6.3f} {base_text}{flag}")
    targets = [result.scores.get(t) for t in TARGET_TYPES]
    if all(v is not None for v in targets):
        print(f"mean of {', '.join(TARGET_TYPES)}: {statistics.fmean(targets):.3f} (target 0.85)")
    print(f"evaluation: {evaluation.get('seconds', 0):.1f} s")
    return result


def seed_summary(results: list[QuickstartResult]) -> list[str]:
    """Per question type over the seeds: each seed's score, the mean and minimum, the baseline, and how many
    seeds beat it; then the mean of the four target types and the time to a healthy endpoint per seed."""
    seeds = "  ".join(f"{f's{r.seed}':>5}" for r in results)
    lines = [f"{'type':<20} {seeds}   {'mean':>5} {'min':>5} {'base':>5}  above"]
    for name in sorted({n for r in results for n in r.scores}):
        values = [r.scores.get(name) for r in results]
        known = [v for v in values if v is not None]
        base = next((r.baselines[name] for r in results if name in r.baselines), None)
        cells = "  ".join(f"{v:>5.2f}" if v is not None else f"{'-':>5}" for v in values)
        base_text = f"{base:>5.2f}" if base is not None else f"{'':>5}"
        above = f"{sum(v > base for v in known)}/{len(known)}" if base is not None else ""
        lines.append(
            f"{name:<20} {cells}   {statistics.fmean(known):>5.2f} {min(known):>5.2f} {base_text}  {above}"
        )
    means = [
        statistics.fmean(r.scores[t] for t in TARGET_TYPES)
        if all(t in r.scores for t in TARGET_TYPES)
        else None
        for r in results
    ]
    lines.append(
        f"{'mean of the four':<20} "
        + "  ".join(f"{m:>5.2f}" if m is not None else f"{'-':>5}" for m in means)
        + f"   (target 0.85: {sum(m is not None and m >= 0.85 for m in means)}/{len(means)} seeds)"
    )
    lines.append(
        f"{'healthy after (s)':<20} "
        + "  ".join(f"{r.healthy_s:>5.0f}" if r.healthy_s else f"{'-':>5}" for r in results)
    )
    return lines


def seed_list(text: str) -> list[int]:
    """`--seeds 0,1,2`: comma-separated, so that KEY=VALUE overrides may follow it on the command line."""
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2, got {text!r}"
        ) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workflow", type=Path, default=ROOT / "workflows" / "quickstart.yaml")
    parser.add_argument("--root", help="run folder root (default: a fresh temporary folder)")
    parser.add_argument(
        "--seeds",
        type=seed_list,
        help="comma-separated, e.g. 0,1,2: one run per seed (pretrain.seed and sft.seed), one after the "
        "other, then the spread per type",
    )
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides, as for mm1 run")
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="mm1-bench-quickstart-")
    overrides = [f"deploy.port={free_port()}", "deploy.keep_serving=false", *args.overrides]
    if not args.seeds:
        measure(args.workflow, root, overrides, None)
        return
    results = [measure(args.workflow, str(Path(root) / f"seed-{s}"), overrides, s) for s in args.seeds]
    print(f"\n== {args.workflow.name} over seeds {', '.join(map(str, args.seeds))}: held-out score per seed")
    print("\n".join(seed_summary(results)))


if __name__ == "__main__":
    main()
