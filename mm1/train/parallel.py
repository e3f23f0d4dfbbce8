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


AC_MODES = ("none", "selective", "full")
# selective: every 2nd block of each tower recomputed (torchtitan's layer-selective AC, its option k = 2).
SELECTIVE_AC_EVERY = 2


def apply_activation_checkpointing(model: nn.Module, mode: str) -> list[nn.Module]:
    """Recompute the activations of some transformer blocks in backward (torchtitan's `apply_ac`, on HF's own
    per-block switch): every block (`full`), every `SELECTIVE_AC_EVERY`-th block of each tower, counted from
    1 as torchtitan does (`selective`), or none. Non-reentrant checkpointing of each block's `forward`, so
    FSDP2's hooks and DDP's unused-parameter search stay outside the recomputation. Returns the blocks."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if mode not in AC_MODES:
        raise ValueError(f"activation_checkpointing must be one of {', '.join(AC_MODES)}, got {mode!r}")
    if mode == "none":
        return []
    chosen = [
        block
        for layers in layer_lists(model)
        for i, block in enumerate(layers)
        if mode == "full" or (i + 1) % SELECTIVE_AC_EVERY == 0
    ]
    other = sorted({type(b).__name__ for b in chosen if not isinstance(b, GradientCheckpointingLayer)})
    if other:
        raise ValueError(
            f"activation checkpointing needs Hugging Face GradientCheckpointingLayer blocks: {other}"
        )
    model.activation_checkpointing_enable({"use_reentrant": False})  # sets every block's checkpoint function
    ids = {id(b) for b in chosen}
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.gradient_checkpointing = id(module) in ids
    return chosen


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """`torch.compile` each transformer block in place (torchtitan's `apply_compile`: the repeated blocks
    share their compiled code, and parameter names do not change). After checkpointing, so a checkpointed
    block's recomputation is inside its compiled region; before FSDP2. Graph breaks are tolerated (a Hugging
    Face tower by name may have some). Returns how many blocks."""
    # As torchtitan: a recomputation in backward does not replay the block's Python side effects (e.g. the
    # `kernels` attention layers' context variable), which compiled regions under checkpoint cannot do.
    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    # Every block shares one compiled frame (Hugging Face's checkpointing wrapper), whose cache holds a graph
    # per block kind (vision/LLM x checkpointed or not), each once more when its shapes turn dynamic (the
    # vision tower's crop count varies by batch): at most 8 here, torch's default limit, past which blocks
    # would silently run eager. Twice that leaves room (e.g. a MoE LLM's blocks).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
    blocks = [block for layers in layer_lists(model) for block in layers]
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


def mixed_precision_policy(precision: str):
    """FSDP2's policy: in bf16 the blocks compute in bf16 while parameters, the gradients' reduction and the
    optimizer stay fp32; in fp32 nothing is cast."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def wrap_model(
    model: nn.Module,
    strategy: str,
    precision: str,
    device: torch.device,
    activation_checkpointing: str = "none",
    compile: bool = False,
    cpu_offload: bool = False,
    compile_backend: str = "inductor",
) -> nn.Module:
    """Checkpoint, compile, move to `device` and wrap for data parallelism, in torchtitan's order (activation
    checkpointing, then torch.compile per block, then FSDP2); no wrapper on one worker with DDP.

    FSDP2 shards each encoder and LLM block, then the rest as the root, all with one mixed-precision policy
    (`mixed_precision_policy`); `cpu_offload` keeps the shards in host memory (FSDP2's CPUOffloadPolicy), so
    the model is not moved to the GPU first and the optimizer steps on the CPU. FSDP2 replaces parameters
    with DTensors, so the optimizer must be built after this call. `compile_backend` is for tests (aot_eager
    traces and differentiates like inductor without generating code).
    """
    if cpu_offload and strategy != "fsdp":
        raise ValueError(f"cpu_offload needs strategy fsdp, got {strategy!r}")
    apply_activation_checkpointing(model, activation_checkpointing)
    if compile:
        compile_blocks(model, compile_backend)
    if not cpu_offload:
        model.to(device)
    if strategy == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        policy = mixed_precision_policy(precision)
        offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
        for layers in layer_lists(model):
            for block in layers:
                fully_shard(block, mp_policy=policy, offload_policy=offload)
        fully_shard(model, mp_policy=policy, offload_policy=offload)
        return model
    if world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=needs_unused_parameter_search(model),
    )
