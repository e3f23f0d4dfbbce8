"""Metric tables for the terminal (the CLI) and for the HTML report, from one builder so both agree.

`metric_table` puts the majority baselines on their own row right under the header, aligned with the metric
columns they belong to; `kshot_table` shows one k-shot metric (METRIC@K) with a column per k side by side;
`per_type_table` puts one checkpoint's per-type scores beside their baselines with the gain over them (split
types such as `count_kind.uniform`, mm1.eval.items, sort right under their base type, each beside its own
baseline), and the number of questions per row when given. Values print with a fixed number of decimals; a
missing or NaN value prints as "-".
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mm1.eval.select import CandidateResult

MISSING = "-"
BASELINE_LABEL = "(majority baseline)"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: list[str] = field(default_factory=list)  # per column: "l" or "r"; default: first left, rest right
    title: str = ""
    emphasis: set[int] = field(default_factory=set)  # row indices to highlight (the winner, the baseline row)

    def __post_init__(self) -> None:
        if not self.align:
            self.align = ["l"] + ["r"] * (len(self.header) - 1)
        for i, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(f"row {i} has {len(row)} cells for {len(self.header)} columns: {row}")

    def to_text(self) -> str:
        widths = [max(len(str(c)) for c in col) for col in zip(self.header, *self.rows, strict=True)]

        def line(cells: Sequence[str]) -> str:
            out = [
                c.ljust(w) if a == "l" else c.rjust(w)
                for c, w, a in zip(cells, widths, self.align, strict=True)
            ]
            return "  ".join(out).rstrip()

        lines = [self.title] if self.title else []
        lines += [line(self.header), "  ".join("-" * w for w in widths)]
        lines += [line(row) for row in self.rows]
        return "\n".join(lines)

    def to_html(self) -> str:
        def cell(tag: str, text: str, align: str) -> str:
            return f'<{tag} class="{"num" if align == "r" else "txt"}">{html.escape(text)}</{tag}>'

        head = "".join(cell("th", h, a) for h, a in zip(self.header, self.align, strict=True))
        body = []
        for i, row in enumerate(self.rows):
            cls = ' class="em"' if i in self.emphasis else ""
            body.append(
                f"<tr{cls}>"
                + "".join(cell("td", c, a) for c, a in zip(row, self.align, strict=True))
                + "</tr>"
            )
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _as_result(r: CandidateResult | Mapping[str, Any]) -> CandidateResult:
    return r if isinstance(r, CandidateResult) else CandidateResult.from_dict(r)


def metric_table(
    results: Sequence[CandidateResult | Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    baselines: Mapping[str, float] | None = None,
    digits: int = 3,
    highlight_checkpoint: str | None = None,
    title: str = "",
    show_checkpoint: bool = False,
) -> Table:
    """Candidates x checkpoints (rows) x metrics (columns), the baseline row under the header.

    A row is (candidate, stage, step); `show_checkpoint` adds the checkpoint URI column (wide; the report).
    """
    parsed = [_as_result(r) for r in results]
    if metrics is None:
        metrics = sorted({m for r in parsed for m in r.metrics})
    baselines = baselines or {}
    lead = ["candidate", "stage", "step"] + (["checkpoint"] if show_checkpoint else [])
    header = [*lead, *metrics]
    align = ["l", "l", "r", "l"][: len(lead)] + ["r"] * len(metrics)
    rows: list[list[str]] = []
    emphasis: set[int] = set()
    if any(m in baselines for m in metrics):
        rows.append(
            [BASELINE_LABEL] + [""] * (len(lead) - 1) + [fmt(baselines.get(m), digits) for m in metrics]
        )
        emphasis.add(0)
    for r in sorted(parsed, key=lambda r: (r.candidate, r.stage != "pretrain", r.step, r.checkpoint)):
        if r.checkpoint == highlight_checkpoint:
            emphasis.add(len(rows))
        cells = [r.candidate, r.stage, str(r.step)] + ([r.checkpoint] if show_checkpoint else [])
        rows.append(cells + [fmt(r.metrics.get(m), digits) for m in metrics])
    return Table(header, rows, align, title, emphasis)


def per_type_table(
    metrics: Mapping[str, float | None],
    baselines: Mapping[str, float],
    benchmark: str,
    digits: int = 3,
    title: str = "",
    counts: Mapping[str, int] | None = None,
) -> Table:
    """One checkpoint's BENCHMARK/TYPE scores beside the majority baseline and the gain over it; `counts`
    (keyed like the metrics, e.g. mm1.eval.benchmarks.question_counts) adds a column of question counts."""
    prefix = f"{benchmark}/"
    names = sorted(m for m in metrics if m.startswith(prefix))
    if not names:
        raise KeyError(f"no {prefix}* metrics among: {', '.join(sorted(metrics)) or '(none)'}")
    # The overall score goes last, under the per-type rows it summarizes.
    names.sort(key=lambda m: m == f"{prefix}overall")
    rows = []
    for m in names:
        score, base = metrics[m], baselines.get(m)
        known = score is not None and not math.isnan(score)  # winner.json stores NaN as null
        gain = score - base if known and base is not None else None
        row = [m.removeprefix(prefix), fmt(score, digits), fmt(base, digits), fmt(gain, digits, signed=True)]
        if counts is not None:
            row.append(str(counts[m]) if m in counts else MISSING)
        rows.append(row)
    header = ["type", "score", "majority baseline", "gain"] + (["questions"] if counts is not None else [])
    return Table(header, rows, title=title)


_AT_K = re.compile(r"^(?P<base>.+)@(?P<k>\d+)$")


def kshot_metrics(results: Sequence[CandidateResult | Mapping[str, Any]]) -> dict[str, list[int]]:
    """k-shot metric bases (METRIC of METRIC@K) among the results' metrics -> their k values, sorted."""
    found: dict[str, set[int]] = {}
    for r in results:
        for name in _as_result(r).metrics:
            match = _AT_K.match(name)
            if match:
                found.setdefault(match["base"], set()).add(int(match["k"]))
    return {base: sorted(ks) for base, ks in sorted(found.items())}


def kshot_table(
    results: Sequence[CandidateResult | Mapping[str, Any]],
    base: str,
    shots: Sequence[int],
    digits: int = 3,
    highlight_checkpoint: str | None = None,
    title: str = "",
    show_checkpoint: bool = False,
) -> Table:
    """One k-shot metric (`base`, e.g. coco-caption-kshot/cider) side by side for each k: columns k=0, k=4, ...

    Rows are the checkpoints that were prompted k-shot: a row's own, or, for a row whose `kshot` record names
    another checkpoint (SFT rows carry their pre-trained checkpoint's k-shot scores), that checkpoint, listed
    once per candidate. `highlight_checkpoint` (the winner) marks its row, or the row its scores came from.
    """
    lead = ["candidate", "stage", "step"] + (["checkpoint"] if show_checkpoint else [])
    header = [*lead, *(f"k={k}" for k in shots)]
    align = ["l", "l", "r", "l"][: len(lead)] + ["r"] * len(shots)
    seen: dict[tuple[str, str], tuple[tuple, list[str], bool]] = {}
    for raw in results:
        r = _as_result(raw)
        source = raw.get("kshot") if isinstance(raw, Mapping) else None
        stage, step, checkpoint = (
            (str(source["stage"]), int(source["step"]), str(source["checkpoint"]))
            if source
            else (r.stage, r.step, r.checkpoint)
        )
        highlight = highlight_checkpoint is not None and highlight_checkpoint in (r.checkpoint, checkpoint)
        key = (r.candidate, checkpoint)
        if key in seen:
            order, cells, was = seen[key]
            seen[key] = (order, cells, was or highlight)
            continue
        cells = [r.candidate, stage, str(step)] + ([checkpoint] if show_checkpoint else [])
        cells += [fmt(r.metrics.get(f"{base}@{k}"), digits) for k in shots]
        seen[key] = ((r.candidate, stage != "pretrain", step, checkpoint), cells, highlight)
    ordered = sorted(seen.values(), key=lambda v: v[0])
    rows = [cells for _, cells, _ in ordered]
    emphasis = {i for i, (_, _, em) in enumerate(ordered) if em}
    return Table(header, rows, align, title or f"{base} by k", emphasis)
