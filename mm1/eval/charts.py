"""The run report's charts: training curves per stage and the selected metric per candidate, as PNG files.

Figures are drawn on Matplotlib's Agg canvas without pyplot's global state, so any thread may draw them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STAGE_ORDER = ("pretrain", "sft")


def stage_rank(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


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
    stages = sorted({r["stage"] for rows in curves.values() for r in rows}, key=stage_rank)
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
