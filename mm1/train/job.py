"""What the workers of one training stage run: a typed job the driver builds once (mm1.train.launch) and Ray
Train pickles to every worker, so the loop reads typed fields rather than a dictionary of strings.

Ray Train hands its loop one dict (`train_loop_config`); the job travels in it under one key: `loop_config()`
packs it there and `TrainJob.of(config)` takes it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mm1.config import ModelConfig, TrainConfig
from mm1.stage_images import StageImages

_KEY = "job"


@dataclass(frozen=True)
class TrainJob:
    # The stage's name ("pretrain" or "sft"): every metric row and Prometheus gauge carries it.
    stage_name: str
    # The stage's section of the workflow: schedule, batch, freezing, parallelism, checkpointing.
    stage: TrainConfig
    # The model a random initialization builds (unused when the weights come from a checkpoint).
    model: ModelConfig
    # mm1.storage location of ingest's tokenizer, for a random initialization.
    tokenizer_dir: str
    # Packed sequence length (the FLOP count of a step).
    seq_len: int
    # Prefix of the workers' log lines (e.g. "pretrain:connector.type-avgpool").
    label: str
    # The stage's resolution, image splitting and crop layouts (mm1.stage_images): the model is switched to
    # them whatever its weights came from; None = the model's own (the model section's, or the checkpoint's).
    images: StageImages | None = None
    # The model folder the stage starts from (the previous stage's last checkpoint); None = random init.
    init_checkpoint: str | None = None
    # A file rank 0 appends each step's metric row to (a path the driver can read); None = no live file.
    metrics_path: str | None = None
    # Prometheus tags (mm1/metrics.py): the workflow's run and the candidate of the sweep.
    run: str = ""
    candidate: str = ""

    def loop_config(self) -> dict[str, Any]:
        """The `train_loop_config` that carries this job to the workers."""
        return {_KEY: self}

    @staticmethod
    def of(loop_config: dict[str, Any]) -> TrainJob:
        """The job inside a worker's `train_loop_config`."""
        return loop_config[_KEY]
