"""Training checkpoints: the model and processor in Hugging Face format, plus what resuming needs.

Layout of one checkpoint folder:
    model/            save_pretrained (safetensors) + the processor: loadable by eval, serving, or any HF tool
    optimizer.pt      the optimizer's full state, keyed by parameter name (the same for DDP, FSDP, one worker)
    train_state.pt    step, data position, scheduler, rank 0's RNG states
    metrics.jsonl     the metric history up to this step (so a resumed run's log continues, never restarts)

Saving is collective: every worker calls `save_checkpoint` (FSDP gathers shards), only rank 0 writes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from mm1.train.parallel import is_fsdp, unwrap

MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    processor: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    history: list[dict[str, Any]],
    rank: int,
) -> None:
    """Every worker calls this; rank 0 writes `folder` (the others may pass any path)."""
    # Full (unsharded) state on CPU: FSDP gathers to rank 0, DDP just strips its `module.` prefix.
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    fsdp = is_fsdp(model)
    weights = get_model_state_dict(model, options=options) if fsdp else None
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if rank != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    inner = unwrap(model)
    inner.save_pretrained(folder / MODEL_DIR, state_dict=weights, safe_serialization=True)
    if fsdp:  # FSDP2 swaps in a subclass named FSDP<class>: record the model's own class name
        from torch.distributed.fsdp import FSDPModule

        real = next(c for c in type(inner).__mro__ if not issubclass(c, FSDPModule))
        inner.config.architectures = [real.__name__]
        inner.config.save_pretrained(folder / MODEL_DIR)
    processor.save_pretrained(folder / MODEL_DIR)
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


def load_history(folder: Path) -> list[dict[str, Any]]:
    text = (folder / METRICS_FILE).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
