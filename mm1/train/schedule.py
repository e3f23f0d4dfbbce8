"""MM1's optimisation defaults: the learning-rate scaling law and warm-up + cosine decay."""

from __future__ import annotations

import math

import torch


def scaling_law_lr(non_embedding_params: int) -> float:
    """MM1's fitted law for the peak LR over N non-embedding parameters: exp(-0.4214 ln N - 0.5535)."""
    return math.exp(-0.4214 * math.log(non_embedding_params) - 0.5535)


def choose_lr(
    configured: float | None, configured_wd: float | None, non_embedding_params: int
) -> tuple[float, float, str]:
    """Peak LR and weight decay, and a sentence saying where they came from (logged with the run)."""
    if configured is None:
        lr = scaling_law_lr(non_embedding_params)
        why = f"lr={lr:.3g} from MM1's scaling law over N={non_embedding_params:,} non-embedding parameters"
    else:
        lr = configured
        why = f"lr={lr:.3g} as configured"
    if configured_wd is None:
        wd = 0.1 * lr
        why += f"; weight_decay={wd:.3g} = 0.1 x lr (MM1)"
    else:
        wd = configured_wd
        why += f"; weight_decay={wd:.3g} as configured"
    return lr, wd, why


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no decay on biases, norms and embeddings (1-D tensors and embedding tables)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "embed" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total, min_ratio))
