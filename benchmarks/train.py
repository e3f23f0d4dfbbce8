"""Training throughput: the Ray Train loop vs a plain PyTorch loop doing the same work, and what Ray costs.

Same model (the `tiny` MM1, random init, seed 0), same packed rows (one generated Shapes ingest, packed by
mm1.data.loader and materialized once, read in stored order: the Ray loop's shuffle buffer is off), same
global batch, same optimizer step (mm1.train.step.train_step), same torch thread count. The plain loop runs
in a bare Ray actor (no Ray Train, no Ray Data iteration, no reporting) on batches collated in memory
beforehand, so it is the upper bound and runs under the same OS scheduling as a Ray Train worker (see
`plain_loop`). Runs are interleaved in rounds (plain, Ray 1 worker, Ray 2 workers; a last plain), so every
Ray run is bracketed by two plain runs. The headline ratio is paired: each Ray run against the mean of the
plain runs just before and after it (which cancels load that drifts over the benchmark), the median over
rounds; the ratio of each kind's best run is printed beside it.
Throughput is steady state: steps warmup+1..N, from per-step wall-clock stamps taken after everything a step
did (reporting included), over the whole window and from the median step (robust to load bursts).

Printed:
  - tokens/s of the Ray Train loop (1 worker, `--threads` threads) and of the plain loop, and the ratio;
  - the fixed cost of a fit: trainer.fit wall time minus the time inside the loop function, split into
    before the loop (controller, worker group, process group, dataset split) and after it;
  - 2 workers x threads/2 (DDP on gloo) vs 1 worker x threads, same global batch;
  - CPU MFU: model FLOPs (mm1.model.info) x tokens/s / the measured fp32 matmul peak of `--threads` threads;
  - the CPU Ray's other processes used meanwhile (from /proc).

    .venv/bin/python benchmarks/train.py [--steps 40] [--warmup 10] [--batch-size 8] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402

from mm1.config import TrainConfig, loads  # noqa: E402
from mm1.train.job import TrainJob  # noqa: E402
from mm1.train.launch import build_trainer  # noqa: E402
from mm1.train.loop import train_loop_per_worker  # noqa: E402

WORKFLOW = """
name: bench-train
data:
  shapes: {{caption_samples: {captions}, interleaved_docs: {docs}, text_samples: {texts}, sft_samples: 10}}
  vocab_size: 512
packing:
  seq_len: 256
  max_images: 4
model:
  preset: tiny
  image_size: 64
  connector: {{type: c-abstractor, num_tokens: 16}}
"""


def timed_loop(cfg: dict[str, Any]) -> None:
    """The production loop, with its entry and exit stamped (to split a fit's wall time)."""
    entered = time.time()
    train_loop_per_worker(cfg)
    if ray.train.get_context().get_world_rank() == 0:
        Path(TrainJob.of(cfg).metrics_path).with_suffix(".loop.json").write_text(
            json.dumps({"entered": entered, "left": time.time()})
        )


def steady(rows: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Throughput over steps warmup+1..N from the rows' end-of-step stamps: over the whole window, and from
    the median step (robust to bursts of load from other processes on a shared machine)."""
    window = [r for r in rows if r["step"] > warmup]
    start = next(r["time"] for r in rows if r["step"] == warmup)
    seconds = window[-1]["time"] - start
    tokens = sum(r["tokens"] for r in window)
    steps = [
        b["time"] - a["time"] for a, b in zip([r for r in rows if r["step"] >= warmup], window, strict=False)
    ]
    median_step = statistics.median(steps)
    in_step = [r.get("compute_fraction", 1.0) * s for r, s in zip(window, steps, strict=True)]
    return {
        "steps": len(window),
        "seconds": seconds,
        "tokens": tokens,
        "sub_images": sum(r["sub_images"] for r in window),
        "label_tokens": sum(r["label_tokens"] for r in window),
        "tokens_per_s": tokens / seconds,
        "median_step_s": median_step,
        "tokens_per_s_median": statistics.median(r["tokens"] for r in window) / median_step,
        "data_wait": sum(r.get("data_wait_fraction", 0.0) * s for r, s in zip(window, steps, strict=True))
        / seconds,
        "in_train_step": sum(in_step) / seconds,
    }


class CpuSampler:
    """CPU seconds used by this driver's Ray processes (everything below it in the process tree), split into
    the training processes (Ray Train workers, the plain loop's actor) and the rest (raylet, GCS, controller,
    dataset coordinator, idle workers), sampled twice a second from /proc (Linux)."""

    TICK = os.sysconf("SC_CLK_TCK")
    TRAINING = (b"ray::RayTrainWorker", b"ray::PlainLoop")

    def __init__(self):
        self.samples: list[tuple[float, dict[int, tuple[bool, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.time(), self._cpu()))

    def _cpu(self) -> dict[int, tuple[bool, float]]:
        parents, usage = {}, {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid = int(stat.parent.name)
                training = (stat.parent / "cmdline").read_bytes().startswith(self.TRAINING)
                parents[pid], usage[pid] = (
                    int(fields[1]),
                    (training, (int(fields[11]) + int(fields[12])) / self.TICK),
                )
            except (OSError, ValueError, IndexError):
                continue
        below, frontier = set(), {os.getpid()}
        while frontier:
            frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
            below |= frontier
        return {pid: usage[pid] for pid in below}

    def cores(self, start: float, end: float) -> tuple[float, float]:
        """Average cores used in [start, end] by (training processes, the rest of Ray); a process that
        started or ended in between counts only while both samples saw it."""
        t0, first = min(self.samples, key=lambda s: abs(s[0] - start))
        t1, last = min(self.samples, key=lambda s: abs(s[0] - end))
        used = [0.0, 0.0]
        for pid, (training, cpu) in last.items():
            if pid in first:
                used[0 if training else 1] += cpu - first[pid][1]
        span = max(t1 - t0, 1e-9)
        return used[0] / span, used[1] / span


def ingest(workdir: Path, scale: float) -> Path:
    from mm1.data.ingest import run_ingest

    out = workdir / f"ingest-{scale:g}"
    if not (out / "stats.json").exists():
        text = WORKFLOW.format(captions=int(1000 * scale), docs=int(200 * scale), texts=int(300 * scale))
        run_ingest(loads(text).data, out, progress=False)
    return out


def ray_fit(args, data_dir: Path, dataset, model_cfg, workers: int, workdir: Path) -> dict[str, Any]:
    stage = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=1e-3,
        warmup_steps=5,
        checkpoint_every=args.steps,  # one checkpoint, after the last measured step
        log_every=10,
        num_workers=workers,
        cpus_per_worker=args.threads / workers,
        max_failures=0,
        shuffle_buffer=0,  # the rows in their stored order, as the plain loop reads them
    )
    name = f"ray-{workers}w-{time.time_ns()}"
    metrics = workdir / f"{name}.jsonl"
    job = TrainJob(
        stage_name="pretrain",
        stage=stage,
        model=model_cfg,
        tokenizer_dir=str(data_dir / "tokenizer"),
        seq_len=256,
        label=name,
        metrics_path=str(metrics),
        run=name,
    )
    trainer = build_trainer(
        job, run_name=name, storage_path=str(workdir / "ray"), dataset=dataset, train_fn=timed_loop
    )
    with CpuSampler() as sampler:
        t0 = time.time()
        trainer.fit()
        t1 = time.time()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    loop = json.loads(metrics.with_suffix(".loop.json").read_text())
    first = rows[0]["time"] - rows[0]["step_time_s"]  # the loop's first step began here
    window = next(r["time"] for r in rows if r["step"] == args.warmup), rows[-1]["time"]
    return {
        **steady(rows, args.warmup),
        "ray_background_cores": sampler.cores(*window)[1],
        "fit_s": t1 - t0,
        "loop_s": loop["left"] - loop["entered"],
        "before_loop_s": loop["entered"] - t0,
        "loop_setup_s": first - loop["entered"],
        "after_loop_s": t1 - loop["left"],
    }


def plain_loop(args, data_dir: Path, dataset, model_cfg) -> dict[str, Any]:
    """The same step in a bare Ray actor with `threads` CPUs (no Ray Train, no Ray Data iteration, no
    reporting), on batches collated in memory beforehand. An actor, not this driver: Ray runs its workers
    niced in their own session, and on a shared machine the driver's speed swings 4x with other users' load
    while an actor's does not, so only an actor is a fair baseline for the Ray Train worker."""
    actor = ray.remote(num_cpus=args.threads)(PlainLoop).remote()
    try:
        with CpuSampler() as sampler:
            rows = ray.get(actor.run.remote(args, data_dir, dataset, model_cfg))
    finally:
        ray.kill(actor)
    window = rows[args.warmup - 1]["time"], rows[-1]["time"]
    return {**steady(rows, args.warmup), "ray_background_cores": sampler.cores(*window)[1]}


class PlainLoop:
    def run(self, args, data_dir: Path, dataset, model_cfg) -> list[dict[str, Any]]:
        from mm1.data.loader import collate_packed
        from mm1.model import apply_freeze
        from mm1.train.loop import non_embedding_params, random_init_model
        from mm1.train.schedule import build_optimizer, build_scheduler, choose_lr
        from mm1.train.step import train_step

        torch.set_num_threads(args.threads)
        batches = [
            {k: v.clone() for k, v in batch.items()}  # own memory, not views of the object store
            for batch in dataset.iter_torch_batches(
                batch_size=args.batch_size, collate_fn=collate_packed, drop_last=True
            )
        ]
        torch.manual_seed(0)
        model, _ = random_init_model(model_cfg, str(data_dir / "tokenizer"))
        apply_freeze(model, [])
        lr, wd, _ = choose_lr(1e-3, None, non_embedding_params(model))
        optimizer = build_optimizer(model, lr, wd)
        scheduler = build_scheduler(optimizer, 5, args.steps, 0.1)
        model.train()
        rows = []
        for step in range(1, args.steps + 1):
            batch = batches[(step - 1) % len(batches)]
            stats = train_step(
                model, optimizer, scheduler, [batch], device=torch.device("cpu"), grad_clip=1.0
            )
            rows.append(
                {
                    "step": step,
                    "time": time.time(),
                    "tokens": stats.tokens,
                    "sub_images": stats.sub_images,
                    "label_tokens": stats.label_tokens,
                }
            )
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the steady-state figures")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences of 256 tokens per step")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (= Ray CPUs) of the 1-worker runs"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="size of the generated Shapes corpus")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "mm1-bench-train"))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three kinds of run")
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    load_before = os.getloadavg()[0]
    # More logical CPUs than threads: Ray Train's controller and the split coordinator need a slot too.
    ray.init(num_cpus=args.threads + 2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    from mm1.data.loader import build_train_dataset
    from mm1.model import mm1_config
    from mm1.train.mfu import flops_model, measure_cpu_peak_flops

    data_dir = ingest(workdir, args.scale)
    wf = loads(WORKFLOW.format(captions=1, docs=1, texts=1))
    model_cfg = wf.model
    dataset = build_train_dataset(
        str(data_dir / "pretrain"),
        image_size=64,
        image_grid=1,
        image_tokens_per_image=16,
        seq_len=256,
        max_images=4,
        seed=0,
    ).materialize()  # packed once: both loops train on identical rows, and no Ray Data task competes for CPU
    rows_available = dataset.count()

    # Interleaved rounds (plain, Ray 1 worker, Ray 2 workers; a last plain), so that bursts of load from other
    # processes hit every kind of run alike and every Ray run has a plain run on either side.
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "ray1": [], "ray2": []}
    for _ in range(args.rounds):
        runs["plain"].append(plain_loop(args, data_dir, dataset, model_cfg))
        runs["ray1"].append(ray_fit(args, data_dir, dataset, model_cfg, 1, workdir))
        runs["ray2"].append(ray_fit(args, data_dir, dataset, model_cfg, 2, workdir))
    runs["plain"].append(plain_loop(args, data_dir, dataset, model_cfg))

    torch.set_num_threads(args.threads)
    peak = measure_cpu_peak_flops(size=2048)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    config = mm1_config("tiny", tokenizer, image_size=64, connector_type="c-abstractor", num_image_tokens=16)
    flops = flops_model(config, 256)
    best = {kind: max(r, key=lambda run: run["tokens_per_s_median"]) for kind, r in runs.items()}

    def model_mfu(run: dict[str, Any]) -> tuple[float, float]:
        """(LLM tokens only, tokens + encoded images) FLOP/s at the median step's token rate over the peak;
        images and label positions (where the LM head runs) count at the run's ratios to tokens."""
        tok_s = run["tokens_per_s_median"]
        img_s = tok_s * run["sub_images"] / run["tokens"]
        label_s = tok_s * run["label_tokens"] / run["tokens"]
        return flops.step_flops(tok_s, 0, label_s) / peak, flops.step_flops(tok_s, img_s, label_s) / peak

    def ratio(a: str, b: str, key: str) -> float:
        return max(r[key] for r in runs[a]) / max(r[key] for r in runs[b])

    def paired(kind: str, key: str) -> list[float]:
        """Each run of `kind` over the mean of the plain runs that bracket it (round i: plain i, then i+1)."""
        plain = [r[key] for r in runs["plain"]]
        return [run[key] / ((plain[i] + plain[i + 1]) / 2) for i, run in enumerate(runs[kind])]

    figures = {
        "load_average": [load_before, os.getloadavg()[0]],
        "packed_rows": rows_available,
        "runs": runs,
        "paired_ray_over_plain": paired("ray1", "tokens_per_s_median"),
        "paired_ray_over_plain_window": paired("ray1", "tokens_per_s"),
        "ratio_ray_over_plain": ratio("ray1", "plain", "tokens_per_s_median"),
        "ratio_ray_over_plain_window": ratio("ray1", "plain", "tokens_per_s"),
        "paired_2_over_1_workers": [
            two["tokens_per_s_median"] / one["tokens_per_s_median"]
            for one, two in zip(runs["ray1"], runs["ray2"], strict=True)
        ],
        "ratio_2_over_1_workers": ratio("ray2", "ray1", "tokens_per_s_median"),
        "ratio_2_over_1_workers_window": ratio("ray2", "ray1", "tokens_per_s"),
        "matmul_peak_flops": peak,
        "flops_per_token": flops.per_token,
        "flops_per_image": flops.per_sub_image,
        "mfu": {kind: model_mfu(run) for kind, run in best.items()},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    _print_table(args, figures)


def _print_table(args, f: dict[str, Any]) -> None:
    runs = f["runs"]
    names = {
        "plain": "plain PyTorch loop (bare actor)",
        "ray1": f"Ray Train, 1 worker x {args.threads} threads",
        "ray2": f"Ray Train, 2 workers x {args.threads / 2:g} thread, DDP gloo",
    }
    print()
    print(
        f"tiny MM1, seq 256, batch {args.batch_size}, {args.threads} threads, {args.steps} steps (steady state = "
        f"steps {args.warmup + 1}..{args.steps}), {args.rounds} round(s), {f['packed_rows']} packed rows, "
        f"load average {f['load_average'][0]:.1f} -> {f['load_average'][1]:.1f} on {os.cpu_count()} CPUs"
    )
    line = "{:<46} {:>9} {:>9} {:>8} {:>6} {:>6} {:>7}"
    print(line.format("run (in the order they ran)", "tok/s", "tok/s", "s/step", "data", "in", "Ray bg"))
    print(line.format("", "(window)", "(median)", "(median)", "wait", "step", "cores"))
    print("-" * 97)
    order = [k for i in range(args.rounds) for k in ("plain", "ray1", "ray2") if i < len(runs[k])] + ["plain"]
    seen = {k: 0 for k in runs}
    for kind in order:
        run = runs[kind][seen[kind]]
        seen[kind] += 1
        print(
            line.format(
                f"{names[kind]} #{seen[kind]}",
                f"{run['tokens_per_s']:.0f}",
                f"{run['tokens_per_s_median']:.0f}",
                f"{run['median_step_s']:.3f}",
                f"{run['data_wait']:.1%}",
                f"{run['in_train_step']:.0%}",
                f"{run['ray_background_cores']:.2f}",
            )
        )
    print("-" * 97)
    first = runs["plain"][0]
    fill = first["tokens"] / first["steps"] / (args.batch_size * 256)
    print(
        f"real tokens fill {fill:.0%} of the positions (max 4 images per row). 'Ray bg': cores used meanwhile by "
        "Ray's other processes (raylet, GCS, Train controller, dataset coordinator, idle workers)"
    )
    per_round = f["paired_ray_over_plain"]
    print(
        f"Ray Train 1 worker / bracketing plain runs: {statistics.median(per_round):.3f}x median step "
        f"(median of rounds {[round(x, 3) for x in per_round]}), "
        f"{statistics.median(f['paired_ray_over_plain_window']):.3f}x window   (target >= 0.95x)"
    )
    print(
        f"Ray Train 1 worker / plain, best runs:      {f['ratio_ray_over_plain']:.3f}x median step, "
        f"{f['ratio_ray_over_plain_window']:.3f}x window"
    )
    print(
        f"2 workers / 1 worker, same round:           {statistics.median(f['paired_2_over_1_workers']):.3f}x "
        f"median step (median of rounds {[round(x, 3) for x in f['paired_2_over_1_workers']]})"
    )
    print(
        f"2 workers / 1 worker, best runs:            {f['ratio_2_over_1_workers']:.3f}x median step, "
        f"{f['ratio_2_over_1_workers_window']:.3f}x window"
    )
    for kind, label in (("ray1", "1 worker "), ("ray2", "2 workers")):
        fixed = [r["fit_s"] - r["loop_s"] for r in runs[kind]]
        run = runs[kind][0]
        print(
            f"fixed cost of a fit, {label}:            {statistics.median(fixed):.1f} s median of "
            f"{[round(x, 1) for x in fixed]} (fit - loop; run #1: {run['before_loop_s']:.1f} s before the loop, "
            f"{run['after_loop_s']:.1f} s after); in the loop before step 1: {run['loop_setup_s']:.1f} s"
        )
    print(
        f"CPU MFU of the best runs at their median step (fp32 matmul peak {f['matmul_peak_flops'] / 1e9:.0f} "
        f"GFLOP/s on {args.threads} threads; {f['flops_per_token'] / 1e6:.1f} MFLOP/token, "
        f"{f['flops_per_image'] / 1e6:.0f} MFLOP/image):"
    )
    for kind in ("plain", "ray1"):
        llm, total = f["mfu"][kind]
        print(f"  {names[kind]:<40} tokens only {llm:.1%}, tokens + images {total:.1%}")


if __name__ == "__main__":
    main()
