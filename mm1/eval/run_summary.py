"""The run report's input: what a finished (or partly finished) run has to show.

The report step builds it from the upstream steps' outputs (mm1.workflow.steps.build_run_summary); tests and
other tools may build one directly or from a plain dict with the same keys (`RunSummary.from_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CandidateCurves:
    name: str  # the sweep candidate, e.g. "connector.type-avgpool"
    overrides: dict[str, Any] = field(default_factory=dict)  # its sweep point
    # Metrics files (mm1.storage locations), JSON lines with step, loss, lr, stage: one per training stage.
    metrics_files: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    name: str  # the run's name
    candidates: list[CandidateCurves]
    description: str = ""
    # One row per evaluated checkpoint: mm1.eval.select.CandidateResult's fields (candidate, checkpoint,
    # stage, step, metrics), optionally "prompt_style" (the k-shot prompt style of pre-trained rows).
    eval: list[dict[str, Any]] = field(default_factory=list)
    baselines: dict[str, float] = field(default_factory=dict)  # majority baselines, keyed like metrics
    baseline_source: str = ""  # the answer set the baselines were fitted on
    selection: dict[str, str] = field(
        default_factory=dict
    )  # {"metric", "mode"}: needed unless a winner has them
    winner: dict[str, Any] = field(default_factory=dict)  # winner.json's content; computed when empty
    sweep_keys: list[str] = field(default_factory=list)  # default: every key the candidates override
    step_times: dict[str, float | None] = field(default_factory=dict)  # wall seconds per step

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        for required in ("name", "candidates"):
            if required not in data:
                raise KeyError(f"run summary lacks {required!r} (see mm1.eval.run_summary.RunSummary)")
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise KeyError(f"run summary has unknown keys {sorted(unknown)} (see mm1.eval.run_summary)")
        values = {k: v for k, v in data.items() if v is not None}
        values["candidates"] = [CandidateCurves(**c) for c in data["candidates"]]
        return cls(**values)

    @property
    def metric_and_mode(self) -> tuple[str | None, str]:
        return (
            self.selection.get("metric") or self.winner.get("metric"),
            self.selection.get("mode") or self.winner.get("mode") or "max",
        )

    @property
    def ablation_keys(self) -> list[str]:
        if self.sweep_keys:
            return list(self.sweep_keys)
        keys: list[str] = []
        for cand in self.candidates:
            keys += [k for k in cand.overrides if k not in keys]
        return keys
