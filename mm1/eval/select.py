"""Select the winning checkpoint across candidates x checkpoints by one metric, and say why it won.

Ranking: by the metric (higher first for mode "max", lower first for "min"); values that agree to 12
significant digits are ties, because equal scores summed in a different order can differ in the last bits.
Ties are broken, in order, by:
1. fewer training steps (`step`): the same quality for less compute, and the later steps did not help;
2. candidate name, then checkpoint URI, alphabetically: arbitrary but stable, so reruns pick the same one.
A NaN metric ranks last and can never win.

`winner.json` (written by `write_winner`, or by `select_winner(..., out_dir=...)`):
    {"checkpoint": URI, "candidate": str, "stage": str, "step": int, "metric": str, "mode": "max"|"min",
     "value": float, "metrics": {...all the winner's metrics...},
     "runner_up": {candidate, checkpoint, stage, step, value} | null,   # second in the ranking
     "margin": float | null,                                          # |value - runner_up.value|
     "best_other_candidate": {...same fields...} | null,               # best result of another candidate
     "margin_over_other_candidate": float | null,
     "tie_break": str, "num_results": int}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Mode = Literal["max", "min"]
WINNER_FILE = "winner.json"
TIE_BREAK = "equal metric (12 significant digits) -> fewer training steps -> candidate name -> checkpoint URI"


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN or Infinity: null stands for them


@dataclass(frozen=True)
class CandidateResult:
    candidate: str  # the sweep candidate's name
    checkpoint: str  # URI of the checkpoint folder (local path or pyarrow filesystem URI)
    metrics: dict[str, float]  # metric name (BENCHMARK/METRIC) -> value
    step: int = 0  # training steps behind this checkpoint: lower is cheaper
    stage: str = "sft"  # pretrain | sft

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CandidateResult:
        return cls(
            candidate=str(data["candidate"]),
            checkpoint=str(data["checkpoint"]),
            # null (how winner.json and other strict JSON write NaN) reads back as NaN
            metrics={k: math.nan if v is None else float(v) for k, v in data["metrics"].items()},
            step=int(data.get("step", 0)),
            stage=str(data.get("stage", "sft")),
        )

    def summary(self, metric: str) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "checkpoint": self.checkpoint,
            "stage": self.stage,
            "step": self.step,
            "value": self.metrics[metric],
        }


@dataclass(frozen=True)
class Winner:
    result: CandidateResult
    metric: str
    mode: Mode
    runner_up: CandidateResult | None = None
    best_other_candidate: CandidateResult | None = None
    num_results: int = 1
    ranking: list[CandidateResult] = field(default_factory=list)  # best first

    @property
    def value(self) -> float:
        return self.result.metrics[self.metric]

    def margin_over(self, other: CandidateResult | None) -> float | None:
        """How far ahead of `other` the winner is (>= 0); None without a comparable other."""
        if other is None or math.isnan(other.metrics[self.metric]):
            return None
        return abs(self.value - other.metrics[self.metric])

    @property
    def margin(self) -> float | None:
        return self.margin_over(self.runner_up)

    def to_dict(self) -> dict[str, Any]:
        def brief(r: CandidateResult | None) -> dict[str, Any] | None:
            return (
                None
                if r is None
                else r.summary(self.metric) | {"value": _json_number(r.metrics[self.metric])}
            )

        return {
            "checkpoint": self.result.checkpoint,
            "candidate": self.result.candidate,
            "stage": self.result.stage,
            "step": self.result.step,
            "metric": self.metric,
            "mode": self.mode,
            "value": self.value,
            "metrics": {k: _json_number(v) for k, v in self.result.metrics.items()},
            "runner_up": brief(self.runner_up),
            "margin": self.margin,
            "best_other_candidate": brief(self.best_other_candidate),
            "margin_over_other_candidate": self.margin_over(self.best_other_candidate),
            "tie_break": TIE_BREAK,
            "num_results": self.num_results,
        }


def _check(results: Sequence[CandidateResult], metric: str, mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if not results:
        raise ValueError("no evaluation results to select a winner from")
    for r in results:
        if metric not in r.metrics:
            available = ", ".join(sorted(r.metrics)) or "(none)"
            raise KeyError(
                f"metric {metric!r} is missing from the result of candidate {r.candidate!r} "
                f"(checkpoint {r.checkpoint}); available metrics: {available}"
            )
    seen: set[str] = set()
    for r in results:
        if r.checkpoint in seen:
            raise ValueError(f"checkpoint {r.checkpoint} appears twice among the results")
        seen.add(r.checkpoint)


def rank_results(
    results: Sequence[CandidateResult], metric: str, mode: Mode = "max"
) -> list[CandidateResult]:
    """Best first, by the rule in the module docstring."""
    _check(results, metric, mode)
    sign = -1.0 if mode == "max" else 1.0

    def key(r: CandidateResult) -> tuple:
        value = r.metrics[metric]
        nan = math.isnan(value)
        rounded = 0.0 if nan else float(f"{value:.12g}")
        return (nan, sign * rounded, r.step, r.candidate, r.checkpoint)

    return sorted(results, key=key)


def select_winner(
    results: Sequence[CandidateResult | Mapping[str, Any]],
    metric: str,
    mode: Mode = "max",
    out_dir: str | Path | None = None,
) -> Winner:
    """The best checkpoint by `metric`; with `out_dir`, also writes out_dir/winner.json."""
    parsed = [r if isinstance(r, CandidateResult) else CandidateResult.from_dict(r) for r in results]
    ranking = rank_results(parsed, metric, mode)
    best = ranking[0]
    if math.isnan(best.metrics[metric]):
        raise ValueError(f"every result has NaN for {metric!r}: there is no winner")
    others = [r for r in ranking[1:] if r.candidate != best.candidate]
    winner = Winner(
        result=best,
        metric=metric,
        mode=mode,
        runner_up=ranking[1] if len(ranking) > 1 else None,
        best_other_candidate=others[0] if others else None,
        num_results=len(ranking),
        ranking=ranking,
    )
    if out_dir is not None:
        write_winner(winner, out_dir)
    return winner


def write_winner(winner: Winner, out_dir: str | Path) -> Path:
    path = Path(out_dir) / WINNER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(winner.to_dict(), indent=2) + "\n")
    return path
