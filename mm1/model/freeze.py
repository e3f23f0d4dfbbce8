"""Per-stage freezing, declared by name (prismatic-style) rather than coded ad hoc in training loops."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from mm1.model.modeling import MM1ForConditionalGeneration
from mm1.model.vision import UNUSED_PARAMETERS

PARTS = ("vision", "connector", "llm")


def part_modules(model: MM1ForConditionalGeneration) -> dict[str, nn.Module]:
    """The three trainable parts; `llm` includes the token embeddings and the LM head."""
    return {"vision": model.vision_tower, "connector": model.connector, "llm": model.language_model}


def apply_freeze(model: MM1ForConditionalGeneration, parts: Iterable[str]) -> list[str]:
    """Freeze exactly `parts` and unfreeze the others; returns the frozen parts.

    Vision parameters that never reach the patch features (e.g. CLIP's post_layernorm) stay frozen always.
    """
    frozen = list(parts)
    unknown = sorted(set(frozen) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts to freeze {unknown}; valid parts are {list(PARTS)}")
    unused = UNUSED_PARAMETERS.get(model.config.vision_config.model_type, ())
    for name, module in part_modules(model).items():
        for param_name, param in module.named_parameters():
            never_used = name == "vision" and param_name.removeprefix("model.").startswith(unused)
            param.requires_grad_(name not in frozen and not never_used)
    return frozen
