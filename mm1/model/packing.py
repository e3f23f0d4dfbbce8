"""Document-isolated attention for packed rows.

A training row may hold several documents back to back; their `position_ids` restart at each document start.
Tokens must then attend only to earlier tokens of their own document: a block-diagonal causal mask. We build it
with transformers' own mask factory, so it comes out in the form the LLM's attention implementation takes
(4D bool for sdpa, 4D additive float for eager, a BlockMask for flex), and hand it to the LLM, which uses a 4D
mask as given. Flash-attention kernels take no 4D mask; they split documents at position restarts themselves
(varlen), so for them the mask is dropped and `position_ids` carry the documents.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.masking_utils import (
    create_causal_mask,
    find_packed_sequence_indices,
    packed_sequence_mask_function,
)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """[B, L] -> [B, L] document index per token (a new one wherever positions do not step by +1); None if
    every row is a single document."""
    if position_ids.ndim != 2 or position_ids.shape[1] < 2:
        return None
    return find_packed_sequence_indices(position_ids)


def packed_attention_mask(
    text_config: PretrainedConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    docs: torch.Tensor,
) -> torch.Tensor | None:
    """The causal mask restricted to each token's document (AND the padding mask), for the LLM.

    Left-padded generation prompts (positions 0,0,0,0,1,2,...) count as packed: each pad becomes its own
    document, which changes nothing for the real tokens since pads are masked out anyway.
    """
    implementation = text_config._attn_implementation or ""
    if "flash" in implementation:
        return None
    docs = docs.expand(inputs_embeds.shape[0], -1)
    if implementation == "sdpa":
        return _sdpa_document_mask(docs, attention_mask)
    if attention_mask is None:
        # An explicit all-ones mask keeps transformers from running its own packed-sequence detection, which
        # would remap indices to positions before our document function sees them.
        attention_mask = torch.ones(docs.shape, dtype=torch.bool, device=inputs_embeds.device)
    return create_causal_mask(
        config=text_config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        cache=None,
        and_mask_function=packed_sequence_mask_function(docs),
    )


def _sdpa_document_mask(docs: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The same 4D bool mask transformers' factory builds for sdpa (causal, same document, real keys), from
    three broadcast comparisons: the factory evaluates the mask function per element under vmap, which
    took 5% of a training step of the tiny model on CPU."""
    length = docs.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=docs.device).tril()
    mask = causal & (docs[:, :, None] == docs[:, None, :])
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, :].bool()
    return mask[:, None]
