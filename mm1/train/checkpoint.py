"""Training checkpoints: the model and processor in Hugging Face format, plus what resuming needs.

Layout of one checkpoint folder:
    model/            save_pretrained (safetensors) + the processor: loadable by eval, serving, or any HF tool
    optimizer.pt      the optimizer's full state, keyed by parameter name (the same for DDP, FSDP, one worker)
    train_state.pt    step, data position, scheduler, rank 0's RNG states
    metrics.jsonl     the metric history up to this step (so a resumed run's log continues, never restarts)
    trainable.safetensors   LoRA stages only (mm1.model.lora): every trainable tensor (adapters, fully trained
                      parts) under the adapted model's names; resuming loads it onto the stage's starting
                      weights. `model/` then holds the merged model, so its readers never need peft.

The merge happens at every checkpoint: `model/` is a full copy of the weights as in a full fine-tune, plus
the (small) trainable file; the frozen base is not stored again (resuming rebuilds it from where the stage
started and checks it against a digest in train_state.pt).

Saving is collective: every worker calls `save_checkpoint` (FSDP gathers shards), only rank 0 writes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from mm1.model.lora import lora_enabled, merged_state_dict, trainable_names
from mm1.model.remote_code import export_remote_code
from mm1.train.parallel import is_fsdp, unwrap

if TYPE_CHECKING:
    from mm1.config_sections import LoraConfig

MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
TRAINABLE_FILE = "trainable.safetensors"


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    processor: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    history: list[dict[str, Any]],
    rank: int,
    lora: LoraConfig | None = None,
) -> None:
    """Every worker calls this; rank 0 writes `folder` (the others may pass any path). With `lora` (the
    stage's section, adapters on), `model/` gets the merged weights and TRAINABLE_FILE the trainable ones."""
    # Full (unsharded) state on CPU: FSDP gathers to rank 0, DDP just strips its `module.` prefix.
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    fsdp = is_fsdp(model)
    adapted = lora_enabled(lora)
    weights = get_model_state_dict(model, options=options) if fsdp or adapted else None
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if rank != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    inner = unwrap(model)
    if adapted:
        trainable = {name: weights[name].contiguous().clone() for name in trainable_names(inner)}
        save_file(trainable, str(folder / TRAINABLE_FILE))
        weights = merged_state_dict(weights, lora)
    inner.save_pretrained(folder / MODEL_DIR, state_dict=weights, safe_serialization=True)
    if fsdp:  # FSDP2 swaps in a subclass named FSDP<class>: record the model's own class name
        from torch.distributed.fsdp import FSDPModule

        real = next(c for c in type(inner).__mro__ if not issubclass(c, FSDPModule))
        inner.config.architectures = [real.__name__]
        inner.config.save_pretrained(folder / MODEL_DIR)
    processor.save_pretrained(folder / MODEL_DIR)
    export_remote_code(folder / MODEL_DIR)  # plain transformers loads model/ with trust_remote_code=True
    torch.save(optim, folder / OPTIMIZER_FILE)
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save({"scheduler": scheduler.state_dict(), "rng": rng, **state}, folder / STATE_FILE)
    with open(folder / METRICS_FILE, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def load_train_state(folder: Path, restore_rng: bool) -> dict[str, Any]:
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    rng = state.pop("rng")
    if restore_rng:
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    return state


def load_optimizer(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
) -> None:
    """Restore the optimizer of an already wrapped model. Under FSDP only rank 0 reads the file and
    broadcasts (one full copy per node would not fit at paper scale); every worker must call this."""
    if is_fsdp(model):
        full = (
            torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False) if rank == 0 else {}
        )
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    else:
        full = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
        options = StateDictOptions()
    set_optimizer_state_dict(model, optimizer, optim_state_dict=full, options=options)


def load_trainable(folder: Path, model: torch.nn.Module) -> None:
    """Load a LoRA checkpoint's trainable tensors into an (unwrapped) adapted model whose frozen weights are
    the stage's starting ones; every trainable parameter must be in the file, and nothing else."""
    trainable = load_file(str(folder / TRAINABLE_FILE))
    expected = set(trainable_names(model))
    if set(trainable) != expected:
        raise ValueError(
            f"{folder / TRAINABLE_FILE} does not fit the adapted model: missing "
            f"{sorted(expected - set(trainable))[:5]}, unexpected {sorted(set(trainable) - expected)[:5]} "
            "(was the stage's lora or freeze section changed since it started?)"
        )
    model.load_state_dict(trainable, strict=False)


def load_history(folder: Path) -> list[dict[str, Any]]:
    text = (folder / METRICS_FILE).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
