"""Per-stage freezing, declared by name (prismatic-style) rather than coded ad hoc in training loops."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from mm1.model.modeling import MM1ForConditionalGeneration
from mm1.registry import FREEZABLE_PARTS

PARTS = tuple(FREEZABLE_PARTS)


def part_modules(model: MM1ForConditionalGeneration) -> dict[str, nn.Module]:
    """The trainable parts by name (mm1.registry.FREEZABLE_PARTS); `llm` includes the token embeddings and
    the LM head."""
    return {name: getattr(model, attribute) for name, attribute in FREEZABLE_PARTS.items()}


def apply_freeze(model: MM1ForConditionalGeneration, parts: Iterable[str]) -> list[str]:
    """Freeze exactly `parts` and unfreeze the others; returns the frozen parts."""
    frozen = list(parts)
    unknown = sorted(set(frozen) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts to freeze {unknown}; valid parts are {list(PARTS)}")
    for name, module in part_modules(model).items():
        module.requires_grad_(name not in frozen)
    return frozen


def train_mode(model: MM1ForConditionalGeneration, frozen: Iterable[str]) -> None:
    """model.train(), but frozen parts stay in eval mode: a frozen part is a fixed function, so batch norm
    keeps its running statistics (a CNN tower's would otherwise drift with every batch) and dropout is off."""
    model.train()
    modules = part_modules(model)
    for name in frozen:
        modules[name].eval()
