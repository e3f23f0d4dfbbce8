"""LoRA adapters (the `peft` library) for a training stage, declared by a stage's `lora` section.

How a stage with `lora.r >= 1` trains (mm1.train.loop):
- Adapters are injected in place (`peft.inject_adapter_in_model`): the model stays an
  MM1ForConditionalGeneration, so freezing, DDP, FSDP2, the step and checkpointing see one module tree. A
  targeted `nn.Linear` becomes a peft LoRA layer: its weight is then `<name>.base_layer.weight`, its adapters
  `<name>.lora_A.default.weight` and `<name>.lora_B.default.weight`.
- Targets are the `nn.Linear` layers inside `lora.parts` (names in mm1.registry.FREEZABLE_PARTS) whose name
  ends with one of `lora.target_modules` (`q_proj`, or a dotted tail such as `self_attn.q_proj`). A target
  that matches no layer there fails at model build time, naming the key and the layers that exist.
- Trainable: the adapters; the other weights of `lora.parts` are frozen; the parts in `freeze` are frozen;
  every other part trains in full (e.g. LoRA on the LLM, the connector in full, the vision tower frozen).
- Checkpoints (mm1.train.checkpoint) keep both: `trainable.safetensors` (every trainable tensor, adapters
  included, under these names: what resuming loads on top of the stage's starting weights) and `model/`, the
  merged model (`merged_state_dict`), a plain MM1 folder that evaluation, select, serving and the next stage
  load without peft.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from mm1.model.freeze import PARTS, apply_freeze, part_modules
from mm1.registry import FREEZABLE_PARTS

if TYPE_CHECKING:
    from mm1.config_sections import LoraConfig

ADAPTER = "default"  # peft's adapter name; one adapter per model
_LORA_KEY = re.compile(r"\.lora_(A|B)\.")
_BASE = ".base_layer."


def lora_enabled(lora: LoraConfig | None) -> bool:
    """A stage's `lora` section turns adapters on with r >= 1 (r = 0, the default, is off)."""
    return lora is not None and lora.r > 0


def is_lora_name(name: str) -> bool:
    """Whether a parameter (or state-dict key) is one of the adapters' matrices."""
    return bool(_LORA_KEY.search(name))


def resolve_targets(model: nn.Module, lora: LoraConfig, key: str = "lora") -> list[str]:
    """Full names of the `nn.Linear` layers inside `lora.parts` that `lora.target_modules` names. `key` is
    the section's place in the workflow (e.g. "sft.lora"), for the error a name that matches nothing gets."""
    unknown = sorted(set(lora.parts) - set(PARTS))
    if unknown:
        raise ValueError(f"{key}.parts: unknown parts {unknown}; expected some of {list(PARTS)}")
    modules = part_modules(model)
    linear = [
        f"{FREEZABLE_PARTS[part]}.{name}"
        for part in lora.parts
        for name, module in modules[part].named_modules()
        if isinstance(module, nn.Linear) and name
    ]
    found, unmatched = [], []
    for target in lora.target_modules:
        hits = [name for name in linear if name == target or name.endswith("." + target)]
        (found.extend(hits) if hits else unmatched.append(target))
    if unmatched:
        tails = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise ValueError(
            f"{key}.target_modules: {unmatched} match no Linear layer of {list(lora.parts)}; "
            f"the Linear layers there are named {tails}"
        )
    return sorted(set(found))


def add_lora(model: nn.Module, lora: LoraConfig, frozen: Iterable[str] = (), key: str = "lora") -> list[str]:
    """Inject LoRA adapters into `model` in place and set what trains (see the module doc); `frozen` are the
    stage's frozen parts. Returns the adapted layers' names."""
    import peft

    frozen = list(frozen)
    clash = sorted(set(frozen) & set(lora.parts))
    if clash:
        raise ValueError(f"{key}.parts {clash} are also frozen: a frozen part gets no adapters")
    targets = resolve_targets(model, lora, key)
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
    )
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    # peft leaves only the adapters trainable; restore the declared freezing, then freeze the adapted parts'
    # own weights.
    apply_freeze(model, frozen)
    modules = part_modules(model)
    for part in lora.parts:
        modules[part].requires_grad_(False)
    for name, param in model.named_parameters():
        if is_lora_name(name):
            param.requires_grad_(True)
    return targets


def lora_scaling(lora: LoraConfig) -> float:
    """What peft multiplies an adapter's output by: alpha / r."""
    return lora.alpha / lora.r


def merged_state_dict(state: Mapping[str, torch.Tensor], lora: LoraConfig) -> dict[str, torch.Tensor]:
    """The plain model's state dict from an adapted one's: W + (alpha / r) B A for every adapted Linear, under
    the layer's own names (`.base_layer.` dropped), adapters removed. Works on any full state dict (one
    worker, DDP, or gathered from FSDP2 shards), so the model itself is left untouched."""
    scaling = lora_scaling(lora)
    merged: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if is_lora_name(name):
            continue
        if _BASE not in name:
            merged[name] = value
            continue
        prefix, _, leaf = name.partition(_BASE)
        if leaf == "weight":
            a = state[f"{prefix}.lora_A.{ADAPTER}.weight"].float()
            b = state[f"{prefix}.lora_B.{ADAPTER}.weight"].float()
            value = (value.float() + scaling * (b @ a)).to(value.dtype)
        merged[f"{prefix}.{leaf}"] = value
    return merged


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters, as the (unwrapped) model's state dict spells them."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def frozen_digest(model: nn.Module) -> dict[str, list[float]]:
    """A cheap fingerprint of the frozen weights (per tensor: sum and sum of squares in float64): a resumed
    LoRA run rebuilds them from the stage's starting point and must find the same ones."""
    with torch.no_grad():
        return {
            name: [float(p.double().sum()), float(p.double().square().sum())]
            for name, p in model.named_parameters()
            if not p.requires_grad
        }


def check_frozen_digest(model: nn.Module, saved: Mapping[str, list[float]], key: str = "lora") -> None:
    """Fail loudly when the frozen weights a resumed LoRA run rebuilt differ from those it started with."""
    now = frozen_digest(model)
    if set(now) != set(saved):
        raise RuntimeError(
            f"{key}: the frozen parameters differ from the checkpoint's ({len(now)} vs {len(saved)} tensors): "
            "was the stage's freeze or lora section changed since it started?"
        )
    changed = [
        name
        for name, (s, q) in now.items()
        if not (abs(s - saved[name][0]) <= 1e-6 * (1 + abs(s)) and abs(q - saved[name][1]) <= 1e-6 * (1 + q))
    ]
    if changed:
        raise RuntimeError(
            f"{key}: the frozen weights this LoRA run started from changed since its checkpoint "
            f"({len(changed)} tensors, e.g. {changed[:3]}): resuming needs the same starting weights "
            "(the stage's init checkpoint, or the same random initialization)"
        )


def trainable_by_part(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per part (vision, connector, llm: their own weights) and `lora` (the adapters),
    plus `all`: every parameter of the model, adapters included (for the trainable share)."""
    counts = {part: 0 for part in PARTS}
    counts["lora"] = 0
    for part, module in part_modules(model).items():
        for name, param in module.named_parameters():
            if param.requires_grad:
                counts["lora" if is_lora_name(name) else part] += param.numel()
    counts["all"] = sum(p.numel() for p in model.parameters())
    return counts
