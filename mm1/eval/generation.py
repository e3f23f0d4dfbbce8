"""Batched greedy generation from ready token ids: the path for prompts that are not a single chat turn.

`mm1.model.loading.generate_answers` takes chats and always suppresses the image token. k-shot document
prompts need two things it cannot give: ids built by `mm1.eval.kshot` (several images, no chat template), and
the image token as a *stop* (a pre-trained model ends a caption by starting the next image). This module
reuses loading's left padding and decodes the same way (cut at the first stop token, special tokens dropped,
stripped), so a chat prompt answered here gets the answer `generate_answers` gives it.

Prompts are grouped by (stop ids, max_new_tokens) because `generate` takes one of each per call, and sorted
by length inside a group so a batch holds similar lengths (less padding). Images are encoded once per batch
per distinct `image_keys` entry and spliced into the embeddings passed to `generate` (a k-shot batch
repeats its demonstrations, a VQA batch its scenes; greedy tokens are identical to passing pixel_values). The grouping is a pure function of
the prompt list, so the same list gives the same batches, and greedy answers are reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from mm1.model.loading import _left_pad
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


def _suppressed(prompt: IdsPrompt, image_token_id: int) -> tuple[int, ...]:
    if prompt.suppress_ids is not None:
        return prompt.suppress_ids
    return () if image_token_id in prompt.stop_ids else (image_token_id,)


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
    pad_id = processor.tokenizer.pad_token_id
    image_id = model.config.image_token_id
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        _check(i, p, model.config.sub_images_per_image)
        groups.setdefault((p.stop_ids, p.max_new_tokens, _suppressed(p, image_id)), []).append(i)
    answers: list[str | None] = [None] * len(prompts)
    for (stop_ids, max_new_tokens, suppress), members in sorted(groups.items()):
        members.sort(key=lambda i: (len(prompts[i].input_ids), i))
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            rows = [torch.tensor([prompts[i].input_ids], dtype=torch.long) for i in chunk]
            input_ids, attention_mask = _left_pad(rows, pad_id)
            input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
            output = model.generate(
                input_ids=input_ids,
                inputs_embeds=_input_embeds(model, input_ids, [prompts[i] for i in chunk]),
                attention_mask=attention_mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=list(stop_ids),
                pad_token_id=pad_id,
                suppress_tokens=list(suppress) or None,
            )
            for i, row in zip(chunk, output[:, input_ids.shape[1] :].tolist(), strict=True):
                cut = next((j for j, token in enumerate(row) if token in stop_ids), len(row))
                answers[i] = processor.decode(row[:cut]).strip()
    return [a if a is not None else "" for a in answers]
