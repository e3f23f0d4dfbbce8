"""Data parallelism for the loop: DDP (CPU/gloo or GPU/nccl) or FSDP2, plus the few collectives it needs.

Nothing here depends on Ray, so the plain-PyTorch benchmark and the FSDP tests use the same code as Ray Train.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sums a few scalars over all workers (one small collective; a no-op on one worker)."""
    if world_size() == 1:
        return values
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def unwrap(model: nn.Module) -> nn.Module:
    """The MM1 model inside a DDP wrapper (FSDP2 shards in place, so it is the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def layer_lists(model: nn.Module) -> list[nn.ModuleList]:
    """The transformer block lists of the encoder and the LLM (`...layers`): the FSDP2 sharding units."""
    return [
        m for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name.endswith("layers")
    ]


def needs_unused_parameter_search(model: nn.Module) -> bool:
    """DDP must look for parameters without gradients when some may sit out a step: MoE experts no token
    was routed to, and a trainable encoder/connector on a micro-batch without images (text-only data)."""
    config = model.config
    encoder = [*model.vision_tower.parameters(), *model.connector.parameters()]
    return bool(config.moe_num_experts) or any(p.requires_grad for p in encoder)


def wrap_model(
    model: nn.Module,
    strategy: str,
    precision: str,
    device: torch.device,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """Move to `device` and wrap for data parallelism (no wrapper on one worker with DDP).

    Activation checkpointing recomputes each block's activations in backward (HF's own switch, per encoder
    and LLM block); non-reentrant, the variant FSDP2 and DDP's unused-parameter search work with.

    FSDP2 shards each encoder and LLM block, then the rest as the root; in bf16 the blocks compute in bf16
    while parameters, gradients' reduction and the optimizer stay fp32. It replaces parameters with DTensors,
    so the optimizer must be built after this call.
    """
    if activation_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model.to(device)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if precision == "bf16"
            else MixedPrecisionPolicy()
        )
        for layers in layer_lists(model):
            for block in layers:
                fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    if world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=needs_unused_parameter_search(model),
    )
