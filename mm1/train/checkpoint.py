"""Training checkpoints: the model and processor in Hugging Face format, plus what resuming needs.

Layout of one checkpoint folder:
    model/            save_pretrained (safetensors) + the processor: loadable by eval, serving, or any HF tool
    train_state.pt    optimizer, scheduler, step, data position (micro-batches consumed), RNG states
    metrics.jsonl     the metric history up to this step (so a resumed run's log continues, never restarts)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODEL_DIR = "model"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    processor: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    unwrap(model).save_pretrained(folder / MODEL_DIR, safe_serialization=True)
    processor.save_pretrained(folder / MODEL_DIR)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            **state,
        },
        folder / STATE_FILE,
    )
    with open(folder / METRICS_FILE, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def load_train_state(folder: Path) -> dict[str, Any]:
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    rng = state.pop("rng", None)
    if rng:
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    return state


def load_history(folder: Path) -> list[dict[str, Any]]:
    path = folder / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
