"""Batched greedy answers to prompts given as token ids: the path for prompts that are not a single chat turn.

Decoding is mm1.model.decoding's `Decoder`, the one decoder evaluation and serving share (a chat prompt
answered here gets the answer `generate_answers` and the serving engine give it). What this module adds:
prompts built by `mm1.eval.kshot` (several images, no chat template), their own stop tokens (a pre-trained
model ends a caption by starting the next image, so the image token is a *stop* there), and images encoded
once per batch per distinct `image_keys` entry, spliced into the input embeddings (a k-shot batch repeats its
demonstrations, a VQA batch its scenes; greedy tokens are identical to passing pixel_values).

Prompts are grouped by (stop ids, max_new_tokens, suppressed ids) and sorted by length inside a group, so a
batch holds similar lengths (less padding). The grouping is a pure function of the prompt list, so the same
list gives the same batches, and greedy answers are reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from mm1.model.decoding import Decoder, Row
from mm1.model.modeling import MM1ForConditionalGeneration
from mm1.model.processing import MM1Processor


@dataclass(frozen=True)
class IdsPrompt:
    input_ids: list[int]
    pixel_values: torch.Tensor | None  # [N_sub, 3, S, S]: this prompt's images in order, or None
    stop_ids: tuple[int, ...]  # the answer ends at the first of these (not included)
    max_new_tokens: int
    # One key per image (same key, same pixels): features are computed once per distinct image in a batch.
    image_keys: tuple[Hashable, ...] = ()
    # Tokens the model may not emit. Default: the image token unless it is a stop (a generated placeholder
    # would have no pixels behind it).
    suppress_ids: tuple[int, ...] | None = None


def _check(i: int, p: IdsPrompt, sub_images: int) -> None:
    if not p.stop_ids or p.max_new_tokens < 1:
        raise ValueError(
            f"prompt {i} needs stop ids and max_new_tokens >= 1, got {p.stop_ids}, {p.max_new_tokens}"
        )
    num_sub = 0 if p.pixel_values is None else p.pixel_values.shape[0]
    if num_sub != len(p.image_keys) * sub_images:
        raise ValueError(
            f"prompt {i} has {len(p.image_keys)} image keys for {num_sub} sub-images ({sub_images} per image)"
        )


def _input_embeds(model: MM1ForConditionalGeneration, input_ids: torch.Tensor, batch: Sequence[IdsPrompt]):
    """Token embeddings with each image run replaced by its features, every distinct image encoded once.

    The same splice as MM1ForConditionalGeneration.merge_image_features (placeholders in order, features of
    the images in order), but a k-shot batch repeats its demonstrations and a VQA batch its scenes, and the
    vision tower is a large share of the cost.
    """
    sub = model.config.sub_images_per_image
    slots: dict[Hashable, int] = {}
    unique: list[torch.Tensor] = []
    order: list[int] = []
    for p in batch:
        for j, key in enumerate(p.image_keys):
            if key not in slots:
                slots[key] = len(unique)
                unique.append(p.pixel_values[j * sub : (j + 1) * sub])
            order.append(slots[key])
    embeds = model.get_input_embeddings()(input_ids)
    placeholder = input_ids == model.config.image_token_id
    if int(placeholder.sum()) != len(order) * model.config.image_tokens_per_image:
        raise ValueError(
            f"the batch holds {int(placeholder.sum())} image placeholders for {len(order)} images of "
            f"{model.config.image_tokens_per_image} tokens"
        )
    if not order:
        return embeds
    features = model.get_image_features(torch.cat(unique).to(model.device, model.dtype))
    features = features.reshape(len(unique), -1, embeds.shape[-1])[order].reshape(-1, embeds.shape[-1])
    return embeds.masked_scatter(placeholder.unsqueeze(-1), features.to(embeds.dtype))


@torch.inference_mode()
def generate_from_ids(
    model: MM1ForConditionalGeneration,
    processor: MM1Processor,
    prompts: Sequence[IdsPrompt],
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to `prompts`, in their order; each cut at its first stop token and decoded."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    decoder = Decoder(model, processor)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        _check(i, p, model.config.sub_images_per_image)
        suppress = p.suppress_ids if p.suppress_ids is not None else decoder.suppressed(p.stop_ids)
        groups.setdefault((p.stop_ids, p.max_new_tokens, suppress), []).append(i)
    answers: list[str] = [""] * len(prompts)
    for (stop_ids, max_new_tokens, suppress), members in sorted(groups.items()):
        members.sort(key=lambda i: (len(prompts[i].input_ids), i))
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            batch = [prompts[i] for i in chunk]
            rows = [
                Row(stop_ids=frozenset(stop_ids), suppress_ids=suppress, max_tokens=max_new_tokens)
                for _ in chunk
            ]
            texts = decoder.answers(
                batch, rows, embed=lambda ids, batch=batch: _input_embeds(model, ids, batch)
            )
            for i, text in zip(chunk, texts, strict=True):
                answers[i] = text
    return answers
