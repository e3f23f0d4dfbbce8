"""The run report: one self-contained HTML page (charts embedded as base64 PNG) with the PNGs beside it.

Sections: the winner and why; loss and learning-rate curves per candidate for each stage; the selected
metric per candidate against its majority baseline; the metric table (candidates x checkpoints x metrics,
baselines on their own row); one k-shot table per k-shot benchmark (its headline metric, a column per k);
the winner's per-type scores beside the baselines (split types such as `count_kind.uniform` on their own rows,
each beside its own baseline, mm1.eval.heldout); the ablation table (which
sweep key moved the selected metric most); trainable parameters per part and stage (LoRA adapters apart);
step wall times; and warnings about anything missing.

`write_report(out_dir, summary)` takes a `mm1.eval.run_summary.RunSummary` (or a dict of its fields).

Metrics files are mm1.storage locations (local paths or object-store URIs). A resumed run may log a step twice;
the last row wins. A truncated last line (a killed writer) is skipped with a warning; any other bad line is
an error naming the file and line.

The ablation compares candidates by their best checkpoint on the selected metric: for each sweep key, the
mean over candidates of each of its values, and the spread (largest mean minus smallest). In a full grid
those are marginal means; in a partial sweep keys are confounded, so read the spread as a hint.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm1 import storage
from mm1.eval.charts import plot_curves, plot_metric, stage_rank
from mm1.eval.items import is_split
from mm1.eval.run_summary import RunSummary
from mm1.eval.select import CandidateResult, Winner, select_winner
from mm1.eval.table import Table, fmt, kshot_metrics, kshot_table, metric_table, per_type_table

REPORT_FILE = "report.html"
CURVES_PNG = "curves.png"
METRIC_PNG = "metric.png"
BASE_VALUE = "(not overridden)"
SPLITS_NOTE = (
    "TYPE.present / TYPE.uniform: separate questions about a kind present in the scene, or a kind drawn "
    "uniformly from all colour-shape pairs (mostly absent: answer 0 / no), one of each per held-out scene; "
    "each has its own majority baseline. overall and the base types do not include them."
)


class MetricsFileError(ValueError):
    """A metrics file line that is neither valid JSON nor the truncated tail of a killed writer."""


@dataclass
class AblationKey:
    key: str  # the sweep key, e.g. model.image_size
    means: dict[str, tuple[float, int]]  # value (as printed) -> (mean metric over its candidates, count)
    spread: float  # largest mean minus smallest; 0 when the key took a single value


# ---- metrics files ---------------------------------------------------------------------------------------


def read_metrics_file(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a metrics JSON-lines file (last row per (stage, step) wins) and warnings about it."""
    lines = storage.read_text(str(path)).splitlines()
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    warnings: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                warnings.append(f"{path}: skipped a truncated last line ({number})")
                continue
            raise MetricsFileError(f"{path}:{number}: not JSON ({exc.msg}): {line[:80]!r}") from exc
        missing = [k for k in ("step", "loss", "stage") if k not in row]
        if missing:
            raise MetricsFileError(f"{path}:{number}: row lacks {', '.join(missing)}: {line[:80]!r}")
        rows[(str(row["stage"]), int(row["step"]))] = row
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (stage_rank(k[0]), k[1]))]
    diverged = next((r for r in ordered if not math.isfinite(float(r["loss"]))), None)
    if diverged is not None:
        warnings.append(f"{path}: loss is {diverged['loss']} at {diverged['stage']} step {diverged['step']}")
    return ordered, warnings


# ---- trainable parameters ------------------------------------------------------------------------------
TRAINABLE_PARTS = ("vision", "connector", "llm", "lora")


def trainable_table(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> Table | None:
    """Candidates x stages: trainable parameters per part, from the `trainable_params` the training loop puts
    on the first row of each start (the last one of a stage wins); None when no row has them."""
    rows = []
    for candidate, run_rows in curves.items():
        latest: dict[str, Mapping[str, int]] = {}
        for row in run_rows:
            if isinstance(row.get("trainable_params"), Mapping):
                latest[str(row["stage"])] = row["trainable_params"]
        for stage in sorted(latest, key=stage_rank):
            counts = latest[stage]
            trained = sum(int(counts.get(p, 0)) for p in TRAINABLE_PARTS)
            total = int(counts.get("all", 0))
            share = f"{trained / total:.2%}" if total else "-"
            cells = [f"{int(counts.get(p, 0)):,}" for p in TRAINABLE_PARTS]
            rows.append([candidate, stage, *cells, f"{trained:,}", f"{total:,}", share])
    if not rows:
        return None
    header = ["candidate", "stage", *TRAINABLE_PARTS, "trainable", "all", "share"]
    return Table(header, rows, align=["l", "l"] + ["r"] * (len(header) - 2))


# ---- ablation --------------------------------------------------------------------------------------------


def best_per_candidate(results: Sequence[CandidateResult], metric: str, mode: str) -> dict[str, float]:
    """Each candidate's best value of `metric` over its checkpoints (NaN when it has none)."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in results:
        v = r.metrics.get(metric, math.nan)
        values[r.candidate].append(v)
    pick = max if mode == "max" else min
    out = {}
    for name, vs in values.items():
        finite = [v for v in vs if not math.isnan(v)]
        out[name] = pick(finite) if finite else math.nan
    return out


def _value_label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _value_order(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def ablation(
    overrides: Mapping[str, Mapping[str, Any]], best: Mapping[str, float], keys: Sequence[str]
) -> list[AblationKey]:
    """Mean metric per value of each sweep key over the candidates, keys by decreasing spread."""
    out = []
    for key in keys:
        groups: dict[str, list[float]] = defaultdict(list)
        for name, value in best.items():
            if math.isnan(value) or name not in overrides:
                continue
            cand = overrides[name]
            groups[_value_label(cand[key]) if key in cand else BASE_VALUE].append(value)
        if not groups:
            continue
        means = {
            v: (sum(g) / len(g), len(g))
            for v, g in sorted(groups.items(), key=lambda kv: _value_order(kv[0]))
        }
        spread = max(m for m, _ in means.values()) - min(m for m, _ in means.values())
        out.append(AblationKey(key, means, spread))
    return sorted(out, key=lambda a: -a.spread)


def ablation_table(keys: Sequence[AblationKey], metric: str) -> Table:
    rows = []
    for a in keys:
        for i, (value, (mean, n)) in enumerate(a.means.items()):
            rows.append([a.key if i == 0 else "", value, str(n), fmt(mean), fmt(a.spread) if i == 0 else ""])
    emphasis = {0} if keys and keys[0].spread > 0 else set()
    header = ["sweep key", "value", "candidates", f"mean {metric}", "spread"]
    return Table(header, rows, ["l", "l", "r", "r", "r"], emphasis=emphasis)


# ---- the page --------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #f4f4f4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; } tr.em td { font-weight: 600; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
.scroll { overflow-x: auto; } img.chart { max-width: 100%; display: block; margin: 8px 0; }
.winner { background: #f6fbf6; border: 1px solid #b7dfb9; padding: 10px 14px; border-radius: 6px; }
.warn { color: #a15c00; } .muted { color: #666; }
"""
# Marks each chart with its decoded size (or "failed") once the page has loaded, and says so on the page.
_SCRIPT = """
window.addEventListener("load", () => {
  for (const img of document.querySelectorAll("img.chart")) {
    const ok = img.complete && img.naturalWidth > 0;
    img.dataset.rendered = ok ? img.naturalWidth + "x" + img.naturalHeight : "failed";
    if (!ok) {
      const p = document.createElement("p");
      p.className = "warn";
      p.textContent = "chart failed to load: " + img.alt;
      img.after(p);
    }
  }
});
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img class="chart" id="{path.stem}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _winner_html(winner: Mapping[str, Any]) -> str:
    def who(r: Mapping[str, Any] | None) -> str:
        if not r:
            return "none"
        return f"{r['candidate']} ({r['stage']} step {r['step']}), {fmt(r.get('value'))}"

    margin = winner.get("margin")
    lines = [
        f"<b>{html.escape(str(winner['candidate']))}</b> wins on <b>{html.escape(winner['metric'])}</b> "
        f"({winner['mode']}): {fmt(winner.get('value'))}",
        f"checkpoint: <code>{html.escape(str(winner['checkpoint']))}</code> "
        f"({html.escape(str(winner.get('stage', '')))} step {winner.get('step', '')})",
        f"runner-up: {html.escape(who(winner.get('runner_up')))}; margin {fmt(margin)}",
    ]
    if winner.get("best_other_candidate"):
        lines.append(
            f"best other candidate: {html.escape(who(winner['best_other_candidate']))}; "
            f"margin {fmt(winner.get('margin_over_other_candidate'))}"
        )
    if winner.get("tie_break"):
        lines.append(f'<span class="muted">ties broken by: {html.escape(winner["tie_break"])}</span>')
    return '<div class="winner">' + "<br>".join(lines) + "</div>"


def _kshot_tables(rows: Sequence[Mapping[str, Any]], winner_checkpoint: str | None) -> list[str]:
    """One table per k-shot benchmark, its headline metric for each k side by side (k=0, k=4, k=8 columns)."""
    parts = []
    for base, shots in kshot_metrics(rows).items():
        if base.rsplit("/", 1)[-1] not in ("overall", "cider"):
            continue  # per-type k-shot scores stay in the metric table
        table = kshot_table(
            rows, base, shots, highlight_checkpoint=winner_checkpoint, title=f"{base} by k (k-shot)"
        )
        parts.append(f'<div class="scroll">{table.to_html()}</div>')
    return parts


def write_report(out_dir: str | Path, summary: RunSummary | Mapping[str, Any]) -> Path:
    """Write out_dir/report.html (self-contained) and its charts as PNG files; returns the HTML path."""
    run = summary if isinstance(summary, RunSummary) else RunSummary.from_dict(summary)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    results = [CandidateResult.from_dict(r) for r in run.eval]
    baselines: dict[str, float] = dict(run.baselines)
    metric, mode = run.metric_and_mode

    winner = dict(run.winner)
    if not winner and metric and results:
        chosen: Winner = select_winner(results, metric, mode)
        winner = chosen.to_dict()

    curves: dict[str, list[dict[str, Any]]] = {}
    for cand in run.candidates:
        rows: list[dict[str, Any]] = []
        for path in cand.metrics_files:
            try:
                file_rows, file_warnings = read_metrics_file(path)
            except FileNotFoundError:
                warnings.append(f"{cand.name}: metrics file not found: {path}")
                continue
            rows += file_rows
            warnings += file_warnings
        if not rows:
            warnings.append(f"{cand.name}: no training metrics to plot")
        curves[cand.name] = rows

    parts = [f"<h1>{html.escape(run.name)}</h1>"]
    if run.description:
        parts.append(f'<p class="muted">{html.escape(run.description)}</p>')
    parts.append("<h2>Winner</h2>")
    parts.append(_winner_html(winner) if winner else '<p class="warn">no winner was selected</p>')

    parts.append("<h2>Training curves</h2>")
    curves_png = plot_curves(curves, out / CURVES_PNG)
    parts.append(_img(curves_png, "training loss and learning rate") if curves_png else "<p>no curves</p>")

    if metric and results:
        best = best_per_candidate(results, metric, mode)
        parts.append(f"<h2>Selected metric: {html.escape(metric)} ({mode})</h2>")
        metric_png = plot_metric(
            best, metric, baselines.get(metric), winner.get("candidate"), out / METRIC_PNG
        )
        if metric_png:
            parts.append(_img(metric_png, f"{metric} per candidate"))

    parts.append("<h2>Metrics</h2>")
    if results:
        table = metric_table(
            results, baselines=baselines, highlight_checkpoint=winner.get("checkpoint"), show_checkpoint=True
        )
        parts.append(f'<div class="scroll">{table.to_html()}</div>')
        if baselines:
            source = run.baseline_source or "not recorded"
            parts.append(f'<p class="muted">Majority baselines fitted on: {html.escape(source)}</p>')
        styles = sorted({(r.get("stage", ""), r["prompt_style"]) for r in run.eval if r.get("prompt_style")})
        if styles:
            listed = ", ".join(f"{stage}: {style}" for stage, style in styles)
            parts.append(f'<p class="muted">k-shot prompt style by stage: {html.escape(listed)}</p>')
        parts += _kshot_tables(run.eval, winner.get("checkpoint"))
    else:
        parts.append('<p class="warn">no evaluation results</p>')

    if winner and baselines:
        benchmarks = sorted({m.split("/", 1)[0] for m in winner.get("metrics", {}) if m in baselines})
        for bench in benchmarks:
            table = per_type_table(winner["metrics"], baselines, bench, title=f"winner on {bench}, per type")
            parts.append(table.to_html())
            if any(is_split(row[0]) for row in table.rows):
                parts.append(f'<p class="muted">{html.escape(SPLITS_NOTE)}</p>')

    keys = run.ablation_keys
    if metric and results and keys:
        overrides = {c.name: c.overrides for c in run.candidates}
        ranked = ablation(overrides, best_per_candidate(results, metric, mode), keys)
        parts.append(f"<h2>Ablation: what moved {html.escape(metric)}</h2>")
        if ranked:
            top = ranked[0]
            parts.append(
                f"<p><b>{html.escape(top.key)}</b> moved it most (spread {fmt(top.spread)} between the means "
                "of its values). Means are over each candidate's best checkpoint.</p>"
            )
            parts.append(ablation_table(ranked, metric).to_html())

    trainable = trainable_table(curves)
    if trainable is not None:
        parts.append("<h2>Trainable parameters</h2>")
        parts.append(trainable.to_html())
        parts.append(
            '<p class="muted">Per part, what each training stage updated: a part\'s own weights, and the LoRA '
            "adapters (mm1.model.lora); share = trainable / all parameters of the trained model.</p>"
        )

    times = {step: s for step, s in run.step_times.items() if s is not None}
    if times:
        rows = [[step, f"{float(s):.1f}", _duration(float(s))] for step, s in times.items()]
        total = sum(float(s) for s in times.values())
        rows.append(["total", f"{total:.1f}", _duration(total)])
        parts.append("<h2>Step wall times</h2>")
        parts.append(Table(["step", "seconds", "h:mm:ss"], rows, emphasis={len(rows) - 1}).to_html())

    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        parts.append(f'<h2>Warnings</h2><ul class="warn">{items}</ul>')

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(run.name)}: MM1 run report</title><style>{_CSS}</style>"
        f"<script>{_SCRIPT}</script></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path = out / REPORT_FILE
    path.write_text(page)
    return path
