"""One optimizer step over a list of micro-batches: the part of the loop that does the arithmetic.

Shared by the Ray Train loop and the plain-PyTorch benchmark, so the two differ only in what surrounds it.
- The loss is the mean over every label token of the step (all micro-batches, all workers), not a mean of
  per-micro-batch means: packed rows carry different numbers of label tokens.
- Gradients are synchronised once per step: DDP's `no_sync` / FSDP2's `set_requires_gradient_sync(False)`
  on every micro-batch but the last.
- Metrics are global: one small all-reduce of (loss, tokens, sub-images) per step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from mm1.data.chat import IGNORE_INDEX
from mm1.train.parallel import all_reduce_sum, world_size


@dataclass
class StepStats:
    loss: float  # mean LM loss per label token, over all workers
    grad_norm: float
    lr: float  # the LR this step used
    tokens: int  # real (non-padding) positions, all workers
    sub_images: int  # encoded images and crops, all workers
    label_tokens: int = 0  # positions with a next-token loss, all workers (where the LM head ran)


def label_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Positions that carry a next-token loss (the model shifts labels by one)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _sync_context(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if not sync and hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    micro_batches: list[dict[str, torch.Tensor]],
    *,
    device: torch.device,
    grad_clip: float,
    autocast: contextlib.AbstractContextManager | None = None,
) -> StepStats:
    world = world_size()
    (items,) = all_reduce_sum([float(sum(label_tokens(b) for b in micro_batches))])
    # Each worker's loss is its label tokens' loss sum over (all label tokens / world): DDP and FSDP average
    # gradients over workers, which turns that into the global per-token mean.
    scale = max(items, 1.0) / world
    tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)
    sub_images = sum(int(b["pixel_values"].shape[0]) for b in micro_batches)
    lm_loss = torch.zeros((), device=device)
    last = len(micro_batches) - 1
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with _sync_context(model, sync=i == last):
            with autocast or contextlib.nullcontext():
                out = model(**batch, num_items_in_batch=scale, loss_only=True)
                # MoE router losses are per micro-batch means: average them over the accumulation.
                loss = out.lm_loss + (out.loss - out.lm_loss) / len(micro_batches)
            loss.backward()
        lm_loss += out.lm_loss.detach().float()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
        grad_norm = grad_norm.full_tensor()
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    loss_sum, tokens, sub_images = all_reduce_sum([float(lm_loss), float(tokens), float(sub_images)])
    return StepStats(
        loss=loss_sum / world,
        grad_norm=float(grad_norm),
        lr=lr,
        tokens=int(tokens),
        sub_images=int(sub_images),
        label_tokens=int(items),
    )
