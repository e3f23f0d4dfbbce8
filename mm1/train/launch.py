"""Launches one training stage of one candidate as a Ray Train run (TorchTrainer, Train V2).

The run's name and storage path identify it: calling `fit_stage` again with the same ones resumes from the
last checkpoint (Ray Train hands it to the loop through `ray.train.get_checkpoint()`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf
from ray.data import DataContext
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from mm1 import storage
from mm1.config import ModelConfig, TrainConfig
from mm1.errors import UserFacingError
from mm1.stage_images import StageImages
from mm1.train.checkpoint import METRICS_FILE, MODEL_DIR, STATE_FILE
from mm1.train.job import TrainJob
from mm1.train.loop import train_loop_per_worker

_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


class StagePastItsSteps(UserFacingError, RuntimeError):
    """The run to resume already trained past the stage's `steps` (a rerun with fewer steps)."""


@dataclass
class StageOutcome:
    run_path: str  # the Ray Train run folder (storage_path/name)
    checkpoints: list[dict[str, Any]]  # [{"step": int, "uri": model folder}], oldest first
    history: list[dict[str, Any]]  # metric rows of the last checkpoint
    # Trainable parameters per part (vision, connector, llm, lora) and `all`, from the last checkpoint's
    # train state (mm1.model.lora.trainable_by_part); None before any checkpoint.
    trainable_params: dict[str, int] | None = None


def fit_stage(
    *,
    stage_name: str,
    stage: TrainConfig,
    label: str,
    run_name: str,
    storage_path: str,
    dataset: Any,
    model_cfg: ModelConfig | Mapping[str, Any],
    tokenizer_dir: str,
    seq_len: int | None = None,
    images: StageImages | None = None,
    init_checkpoint: str | None = None,
    metrics_path: str | None = None,
    run: str = "",
    candidate: str = "",
) -> StageOutcome:
    """Run (or resume) one stage to `stage.steps`; returns what storage holds, not what memory says.
    `run` (the Prometheus tag) defaults to `run_name`; `seq_len` is `images.seq_len` when the stage's image
    settings are given; the rest is described by TrainJob's fields."""
    if images is None and seq_len is None:
        raise ValueError("fit_stage needs the stage's seq_len or its image settings (images)")
    check_resumable(storage_path, run_name, stage_name, stage.steps)
    job = TrainJob(
        stage_name=stage_name,
        stage=stage,
        model=model_config(model_cfg),
        tokenizer_dir=tokenizer_dir,
        seq_len=images.seq_len if images is not None else seq_len,
        images=images,
        label=label,
        init_checkpoint=init_checkpoint,
        metrics_path=metrics_path,
        run=run or run_name,
        candidate=candidate,
    )
    build_trainer(job, run_name=run_name, storage_path=storage_path, dataset=dataset).fit()
    return collect_outcome(storage_path, run_name)


def check_resumable(storage_path: str, run_name: str, stage_name: str, steps: int) -> None:
    """Refuse to resume a run whose last checkpoint lies beyond `steps`: Ray Train would hand that checkpoint
    to the loop, which would stop at once, and the stage would end without the checkpoint it asked for."""
    existing = collect_outcome(storage_path, run_name)
    if existing.checkpoints and existing.checkpoints[-1]["step"] > steps:
        last = existing.checkpoints[-1]["step"]
        raise StagePastItsSteps(
            f"{stage_name}.steps is {steps}, but this run already trained to step {last} "
            f"({existing.run_path}); a run resumes from its last checkpoint and cannot go back",
            hint=f"set {stage_name}.steps to {last} or more, or use a new storage.root "
            f"(or delete {existing.run_path}) to train {steps} steps afresh",
        )


def build_trainer(
    job: TrainJob,
    *,
    run_name: str,
    storage_path: str,
    dataset: Any,
    train_fn: Callable[[dict[str, Any]], None] = train_loop_per_worker,
) -> TorchTrainer:
    """The TorchTrainer of one stage: `job` goes to every worker, `dataset` is split among them, and the run
    lives at storage_path/run_name. `train_fn` wraps or replaces the loop (the benchmark times it)."""
    stage = job.stage
    return TorchTrainer(
        train_fn,
        train_loop_config=job.loop_config(),
        scaling_config=ScalingConfig(
            num_workers=stage.num_workers,
            use_gpu=stage.use_gpu,
            resources_per_worker={"CPU": stage.cpus_per_worker, **({"GPU": 1} if stage.use_gpu else {})},
            placement_strategy=stage.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=stage.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=stage.keep_checkpoints),
        ),
        datasets={"train": dataset},
        dataset_config=ordered_ingest(),
    )


def ordered_ingest() -> DataConfig:
    """The driver's Ray Data execution options with `preserve_order`: Train replaces a dataset's own options
    with its ingest options, and without it a streamed (not materialized) dataset reaches the workers in the
    order its tasks finish. With one worker, a stage's rows then come in the same order on every run.
    (A copy of the context's options, not `DataConfig.default_ingest_options()`: in Ray 2.60 that passes the
    deprecated `exclude_resources` and prints a RayDeprecationWarning on the console.)"""
    options = copy.deepcopy(DataContext.get_current().execution_options)
    options.preserve_order = True
    return DataConfig(execution_options=options)


def model_config(model: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    """The model section as its dataclass; its plain-data form (`dataclasses.asdict`) is typed again."""
    if isinstance(model, ModelConfig):
        return model
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), dict(model)))  # type: ignore[return-value]


def collect_outcome(storage_path: str, run_name: str) -> StageOutcome:
    """Read the run's checkpoints from storage (local or remote) rather than trusting in-memory results."""
    run_path = storage.join(storage.absolute(storage_path), run_name)
    found = []
    for folder in storage.list_dirs(run_path):
        match = _CHECKPOINT_DIR.search(storage.name(folder))
        if match:
            found.append((int(match.group(1)), folder))
    found.sort()
    checkpoints = [{"step": step, "uri": storage.join(folder, MODEL_DIR)} for step, folder in found]
    history: list[dict[str, Any]] = []
    trainable: dict[str, int] | None = None
    if found:
        with contextlib.suppress(FileNotFoundError, OSError):
            text = storage.read_text(storage.join(found[-1][1], METRICS_FILE))
            history = [json.loads(line) for line in text.splitlines() if line.strip()]
        with contextlib.suppress(FileNotFoundError, OSError):
            state = torch.load(
                io.BytesIO(storage.read_bytes(storage.join(found[-1][1], STATE_FILE))), weights_only=False
            )
            trainable = state.get("trainable_params")
    return StageOutcome(run_path, checkpoints, history, trainable)
