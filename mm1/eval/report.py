"""The run report: one self-contained HTML page (charts embedded as base64 PNG) with the PNGs beside it.

Sections: the winner and why; loss and learning-rate curves per candidate for each stage; the selected
metric per candidate against its majority baseline; the metric table (candidates x checkpoints x metrics,
baselines on their own row); the winner's per-type scores beside the baselines; the ablation table (which
sweep key moved the selected metric most); step wall times; and warnings about anything missing.

`write_report(out_dir, run_summary)` takes a plain, JSON-serializable dict:

    {
      "name": "quickstart",                       # run name (required)
      "description": "...",                       # optional
      "candidates": [                             # required, one per sweep candidate
        {"name": "image_size-32__connector.type-avgpool",
         "overrides": {"model.image_size": 32, "model.connector.type": "avgpool"},   # the sweep point
         "metrics_files": ["runs/q/pretrain/<cand>/metrics.jsonl", "runs/q/sft/<cand>/metrics.jsonl"]}
      ],                                          # metrics files: JSON lines with step, loss, lr, stage
      "eval": [                                   # one per evaluated checkpoint (select.CandidateResult)
        {"candidate": "...", "checkpoint": "runs/q/sft/<cand>/step_200", "stage": "sft", "step": 200,
         "metrics": {"shapes-vqa/overall": 0.61, "shapes-vqa/count_all": 0.44, "shapes-caption/cider": 0.9},
         "prompt_style": "chat"}                  # optional: the k-shot prompt style used (kshot.py)
      ],
      "baselines": {"shapes-vqa/overall": 0.31, ...},   # optional: majority baselines, keyed like metrics
      "baseline_source": "shapes sft train answers",    # optional: the answer set they were fitted on
      "selection": {"metric": "shapes-vqa/overall", "mode": "max"},   # needed unless "winner" has them
      "winner": {...},                            # optional: winner.json's content; computed if absent
      "sweep_keys": ["model.image_size", ...],    # optional: default, every key the candidates override
      "step_times": {"ingest": 12.5, "pretrain": 310.2, ...}          # optional: wall seconds per step
    }

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

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mm1 import storage
from mm1.eval.select import CandidateResult, Winner, select_winner
from mm1.eval.table import Table, fmt, metric_table, per_type_table

REPORT_FILE = "report.html"
CURVES_PNG = "curves.png"
METRIC_PNG = "metric.png"
STAGE_ORDER = ("pretrain", "sft")
BASE_VALUE = "(not overridden)"


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
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (_stage_rank(k[0]), k[1]))]
    diverged = next((r for r in ordered if not math.isfinite(float(r["loss"]))), None)
    if diverged is not None:
        warnings.append(f"{path}: loss is {diverged['loss']} at {diverged['stage']} step {diverged['step']}")
    return ordered, warnings


def _stage_rank(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


# ---- charts ----------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state: safe in any worker thread
    return fig


def _colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def plot_curves(curves: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> Path | None:
    """Loss (top row) and learning rate (bottom row) per stage (columns), one line per candidate."""
    stages = sorted({r["stage"] for rows in curves.values() for r in rows}, key=_stage_rank)
    if not stages:
        return None
    fig = _figure(5.5 * len(stages), 6.5)
    axes = fig.subplots(2, len(stages), squeeze=False)
    colors = dict(zip(curves, _colors(len(curves)), strict=True))
    for col, stage in enumerate(stages):
        loss_ax, lr_ax = axes[0][col], axes[1][col]
        for name, rows in curves.items():
            picked = [r for r in rows if r["stage"] == stage]
            if not picked:
                continue
            steps = [r["step"] for r in picked]
            loss_ax.plot(steps, [float(r["loss"]) for r in picked], color=colors[name], label=name, lw=1.4)
            if all("lr" in r for r in picked):
                lr_ax.plot(steps, [float(r["lr"]) for r in picked], color=colors[name], lw=1.4)
        loss_ax.set_title(f"{stage}: training loss")
        lr_ax.set_title(f"{stage}: learning rate")
        lr_ax.set_xlabel("step")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        for ax in (loss_ax, lr_ax):
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=8)
    return _save(fig, path)


def plot_metric(
    best: Mapping[str, float], metric: str, baseline: float | None, winner: str | None, path: Path
) -> Path | None:
    """The selected metric of each candidate's best checkpoint, the majority baseline as a dashed line."""
    names = [n for n in best if not math.isnan(best[n])]
    if not names:
        return None
    fig = _figure(9, 1.2 + 0.45 * len(names))
    ax = fig.subplots()
    colors = ["#d62728" if n == winner else "#1f77b4" for n in names]
    ax.barh(range(len(names)), [best[n] for n in names], color=colors)
    ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    ax.invert_yaxis()
    if baseline is not None:
        ax.axvline(baseline, color="black", ls="--", lw=1.2, label=f"majority baseline {baseline:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(metric)
    ax.set_title(f"{metric}: best checkpoint per candidate (winner in red)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


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


def _selection(summary: Mapping[str, Any]) -> tuple[str | None, str]:
    sel = summary.get("selection") or {}
    winner = summary.get("winner") or {}
    return sel.get("metric") or winner.get("metric"), sel.get("mode") or winner.get("mode") or "max"


def _sweep_keys(summary: Mapping[str, Any]) -> list[str]:
    if summary.get("sweep_keys"):
        return list(summary["sweep_keys"])
    keys: list[str] = []
    for cand in summary["candidates"]:
        keys += [k for k in cand.get("overrides", {}) if k not in keys]
    return keys


def write_report(out_dir: str | Path, run_summary: Mapping[str, Any]) -> Path:
    """Write out_dir/report.html (self-contained) and its charts as PNG files; returns the HTML path."""
    for required in ("name", "candidates"):
        if required not in run_summary:
            raise KeyError(f"run_summary lacks {required!r} (see mm1.eval.report's docstring for the schema)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    results = [CandidateResult.from_dict(r) for r in run_summary.get("eval", [])]
    baselines: dict[str, float] = dict(run_summary.get("baselines") or {})
    metric, mode = _selection(run_summary)

    winner = dict(run_summary.get("winner") or {})
    if not winner and metric and results:
        chosen: Winner = select_winner(results, metric, mode)
        winner = chosen.to_dict()

    curves: dict[str, list[dict[str, Any]]] = {}
    for cand in run_summary["candidates"]:
        rows: list[dict[str, Any]] = []
        for path in cand.get("metrics_files", []):
            try:
                file_rows, file_warnings = read_metrics_file(path)
            except FileNotFoundError:
                warnings.append(f"{cand['name']}: metrics file not found: {path}")
                continue
            rows += file_rows
            warnings += file_warnings
        if not rows:
            warnings.append(f"{cand['name']}: no training metrics to plot")
        curves[cand["name"]] = rows

    parts = [f"<h1>{html.escape(run_summary['name'])}</h1>"]
    if run_summary.get("description"):
        parts.append(f'<p class="muted">{html.escape(run_summary["description"])}</p>')
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
            source = run_summary.get("baseline_source") or "not recorded"
            parts.append(f'<p class="muted">Majority baselines fitted on: {html.escape(source)}</p>')
        styles = sorted(
            {(r.get("stage", ""), r["prompt_style"]) for r in run_summary["eval"] if r.get("prompt_style")}
        )
        if styles:
            listed = ", ".join(f"{stage}: {style}" for stage, style in styles)
            parts.append(f'<p class="muted">k-shot prompt style by stage: {html.escape(listed)}</p>')
    else:
        parts.append('<p class="warn">no evaluation results</p>')

    if winner and baselines:
        benchmarks = sorted({m.split("/", 1)[0] for m in winner.get("metrics", {}) if m in baselines})
        for bench in benchmarks:
            table = per_type_table(winner["metrics"], baselines, bench, title=f"winner on {bench}, per type")
            parts.append(table.to_html())

    keys = _sweep_keys(run_summary)
    if metric and results and keys:
        overrides = {c["name"]: c.get("overrides", {}) for c in run_summary["candidates"]}
        ranked = ablation(overrides, best_per_candidate(results, metric, mode), keys)
        parts.append(f"<h2>Ablation: what moved {html.escape(metric)}</h2>")
        if ranked:
            top = ranked[0]
            parts.append(
                f"<p><b>{html.escape(top.key)}</b> moved it most (spread {fmt(top.spread)} between the means "
                "of its values). Means are over each candidate's best checkpoint.</p>"
            )
            parts.append(ablation_table(ranked, metric).to_html())

    if run_summary.get("step_times"):
        times = run_summary["step_times"]
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
        f"<title>{html.escape(run_summary['name'])}: MM1 run report</title><style>{_CSS}</style>"
        f"<script>{_SCRIPT}</script></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path = out / REPORT_FILE
    path.write_text(page)
    return path
