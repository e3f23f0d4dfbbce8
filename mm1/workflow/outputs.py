"""What each step hands the next: typed outputs, saved in the step's manifest as plain JSON.

A training or ingest step does its work once per *unit*: the distinct settings among the sweep's candidates
of the keys it and its ancestors read (a sweep over `sft.lr` has one ingest unit and one pre-training unit, two
SFT units). Outputs are keyed by unit and say which keys name their units (`reads`), so a consumer finds a
candidate's unit from the candidate itself. Nothing maps candidate names, so outputs a skipped step left stay
valid when the sweep grows along keys that step does not read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mm1.workflow.fingerprint import under
from mm1.workflow.sweep import Candidate, slug

BASE_UNIT = "base"


def unit_name(cand: Candidate, reads: tuple[str, ...] | list[str]) -> str:
    """The candidate's sweep point restricted to `reads` ("base" when the sweep touches none of them)."""
    return "__".join(slug(k, v) for k, v in cand.overrides.items() if under(k, reads)) or BASE_UNIT


def projected_overrides(cand: Candidate, reads: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {k: v for k, v in cand.overrides.items() if under(k, reads)}


def group_units(cands: list[Candidate], reads: tuple[str, ...]) -> dict[str, Candidate]:
    """unit -> the first candidate standing for it (they all share the settings under `reads`)."""
    units: dict[str, Candidate] = {}
    for cand in cands:
        units.setdefault(unit_name(cand, reads), cand)
    return units


@dataclass
class Dataset:
    """One ingested data section: locations in the run folder."""

    pretrain: str  # packed-ready pre-training shards (parquet)
    sft: str  # SFT shards
    tokenizer: str  # the tokenizer folder
    stats: str  # stats.json: counts, mixture, dropped records


@dataclass
class IngestOutputs:
    reads: list[str]
    datasets: dict[str, Dataset]

    def for_candidate(self, cand: Candidate) -> Dataset:
        return self.datasets[unit_name(cand, self.reads)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IngestOutputs:
        return cls(list(data["reads"]), {k: Dataset(**v) for k, v in data["datasets"].items()})


@dataclass
class Checkpoint:
    step: int
    uri: str


@dataclass
class TrainedRun:
    """One Ray Train run of a stage."""

    overrides: dict[str, Any]  # the sweep point it trained (its unit's keys only)
    run_path: str  # the Ray Train run folder (its identity for children and resume)
    checkpoints: list[Checkpoint]  # oldest first; the last is the stage's result
    metrics: str  # JSON lines, one per step
    final_loss: float | None = None
    mean_data_wait_fraction: float | None = None
    tokens_per_s: float | None = None
    # Trainable parameters per part (vision, connector, llm, lora) and `all` parameters (mm1.model.lora).
    trainable_params: dict[str, int] | None = None

    @property
    def last(self) -> Checkpoint:
        return self.checkpoints[-1]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainedRun:
        fields_ = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields_}
        values["checkpoints"] = [Checkpoint(**c) for c in data["checkpoints"]]
        return cls(**values)


@dataclass
class TrainOutputs:
    stage: str  # the stage that produced the runs (sft's outputs are pretrain's when SFT is disabled)
    reads: list[str]
    runs: dict[str, TrainedRun] = field(default_factory=dict)
    use_gpu: bool = False  # the runs trained on GPUs (their checkpoints are evaluated there too)

    def for_candidate(self, cand: Candidate) -> TrainedRun:
        return self.runs[unit_name(cand, self.reads)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOutputs:
        runs = {k: TrainedRun.from_dict(v) for k, v in data["runs"].items()}
        return cls(data["stage"], list(data["reads"]), runs, bool(data.get("use_gpu", False)))


@dataclass
class Baseline:
    source: str  # the answer set the majority answers were fitted on
    answers: dict[str, Any]
    metrics: dict[str, float]  # keyed like the candidates' metrics


@dataclass
class EvalOutputs:
    # One row per evaluated checkpoint: mm1.eval.select.CandidateResult's fields, plus k-shot details.
    results: list[dict[str, Any]]
    baseline: Baseline
    num_questions: int
    num_captions: int
    pretrained: dict[str, str]  # candidate -> its last pre-trained checkpoint
    benchmarks: dict[str, dict[str, Any]]  # what each benchmark asked and how it was decoded
    kshot: dict[str, Any] | None
    seconds: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalOutputs:
        return cls(**{**data, "baseline": Baseline(**data["baseline"])})


@dataclass
class SelectOutputs:
    winner: dict[str, Any]  # mm1.eval.select.Winner.to_dict(): checkpoint, candidate, metric, value, why

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelectOutputs:
        return cls(dict(data["winner"]))


@dataclass
class ReportOutputs:
    html: str


def to_json(outputs: Any) -> dict[str, Any]:
    """A step's outputs as the manifest stores them."""
    return dataclasses.asdict(outputs) if dataclasses.is_dataclass(outputs) else dict(outputs)
