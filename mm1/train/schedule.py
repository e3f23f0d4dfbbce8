"""MM1's optimisation defaults: the learning-rate scaling law, decoupled weight decay, warm-up + cosine.

Weight decay follows MM1's convention (AXLearn's decoupled AdamW, Loshchilov & Hutter's Algorithm 2): a
weight shrinks by `lambda x schedule(t)` per step, independent of the peak LR, with lambda = 0.1 x lr.
torch's AdamW multiplies its `weight_decay` by the current LR instead, so it is given lambda / lr: passing
lambda itself would decay ~1/lr times too little (5.8e-6 x 5.8e-5 per step: no decay at all).
"""

from __future__ import annotations

import math

import torch

WD_OVER_LR = 0.1  # MM1: lambda = 0.1 x peak lr
BETAS = (0.9, 0.95)
FUSED_DEVICES = ("cuda", "cpu")  # where torch has a fused AdamW kernel that we train on


def scaling_law_lr(non_embedding_params: int) -> float:
    """MM1's fitted law for the peak LR over N non-embedding parameters: exp(-0.4214 ln N - 0.5535)."""
    if non_embedding_params <= 0:
        raise ValueError(f"the scaling law needs N > 0 non-embedding parameters, got {non_embedding_params}")
    return math.exp(-0.4214 * math.log(non_embedding_params) - 0.5535)


def choose_lr(
    configured: float | None, configured_wd: float | None, non_embedding_params: int
) -> tuple[float, float, str]:
    """Peak LR, decoupled weight decay lambda, and a sentence saying where they came from (logged)."""
    if configured is None:
        lr = scaling_law_lr(non_embedding_params)
        why = f"lr={lr:.3g} from MM1's scaling law over N={non_embedding_params:,} non-embedding parameters"
    else:
        lr = configured
        why = f"lr={lr:.3g} as configured"
    if configured_wd is None:
        wd = WD_OVER_LR * lr
        why += f"; decoupled weight_decay={wd:.3g} = {WD_OVER_LR} x lr (MM1)"
    else:
        wd = configured_wd
        why += f"; decoupled weight_decay={wd:.3g} as configured"
    return lr, wd, why


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier for the optimizer step `step` (0-based): linear warm-up to 1 over `warmup` steps, then
    cosine decay reaching `min_ratio` at the last step (`total - 1`)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup + 1) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm scales (1-D) and embedding tables (token, position, class) are not decayed."""
    return param.ndim < 2 or "embed" in name


def fused_supported(params: list[torch.Tensor]) -> bool:
    """torch's fused AdamW (one kernel for every parameter's update) exists for CUDA and, since torch 2.4,
    for CPU; it needs floating-point parameters (sharded DTensors included) on one of those devices."""
    return all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)


def build_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; `weight_decay` is MM1's decoupled lambda (see the module doc).
    Fused where the parameters' device supports it (`fused=None`); the same update as the unfused
    (foreach) one up to rounding."""
    decay, keep = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (keep if no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay / lr if lr > 0 else 0.0},
        {"params": keep, "weight_decay": 0.0},
    ]
    if fused is None:
        fused = fused_supported(decay + keep)
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=1e-8, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total, min_ratio))


def sync_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """After restoring a checkpoint, set the LR the schedule gives for the current step. The restored
    optimizer still holds the LR of the saved schedule, which differs when the run is continued with a
    different step count (the cosine is stretched over the new total)."""
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
