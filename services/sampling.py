"""Per-request sampling: each request keeps its own temperature, top_p and random generator.

A request's seed drives its own `torch.Generator` (one per choice when n > 1: `choice_seed`), so its draws
do not depend on which other requests share its batch: the same seed and prompt give the same answer alone or batched (up to the last-bit differences a
padded batch can make in the logits themselves).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy (mm1.model.decoding's choice)
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; K: each token's log-probability and its top K alternatives


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of a request's choice `index` (n > 1): the request's own for choice 0, so that n=1 and the
    first of n agree, distinct derived ones for the others (the same seed gives the same n answers)."""
    if seed is None or index == 0:
        return seed
    return (seed * 0x9E3779B97F4A7C15 + index) % (1 << 63)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token id drawn from a [vocab] row of logits at `params.temperature` > 0 (greedy rows take the
    decoder's own choice: mm1.model.decoding)."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        # Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p (at least one).
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
