"""Helpers for the model tests (a uniquely named module: `conftest` is ambiguous across test folders)."""

from __future__ import annotations

import numpy as np
import torch

from mm1.model import build_mm1

CORPUS = [
    "a red square above a blue circle",
    "what shape is in the picture? a green triangle",
    "the quick brown fox jumps over the lazy dog",
    "how many circles are there? two circles and one square",
] * 20


def make_model(tokenizer, seed: int = 0, **kwargs):
    """The `tiny` preset with a larger init so random logits are far from uniform: greedy decoding then
    produces varied tokens, which makes equality tests meaningful."""
    torch.manual_seed(seed)
    overrides = {
        "text_config.initializer_range": 0.3,
        "initializer_range": 0.3,
        **kwargs.pop("overrides", {}),
    }
    return build_mm1("tiny", tokenizer, overrides=overrides, **kwargs).eval()


def random_image(seed: int, size: int = 80) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
