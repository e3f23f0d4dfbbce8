"""The chat template and label masking: one code path for pre-training, SFT, evaluation and serving.

Sequences are built from token ids directly (never by string-formatting a template and re-tokenizing), so
every consumer gets byte-identical prompts. An image is one `<image>` placeholder in user-facing text; here it
is expanded to `image_tokens` copies of the image token id, which the model replaces by image features.

Layout of a conversation:
    <s><|user|>\n{user text}<|end|>\n<|assistant|>\n{answer}<|end|>\n ... </s>
Loss (labels != -100) falls on the assistant's answers and their closing <|end|> only.
Pre-training documents: <s>{text and images in document order}</s>, loss on every text token after <s>.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing only: readers import this module in Ray workers that never load transformers
    from transformers import PreTrainedTokenizerBase

PAD = "<pad>"
BOS = "<s>"
EOS = "</s>"
IMAGE = "<image>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE, USER, ASSISTANT, END)
IGNORE_INDEX = -100

_IMAGE_SPLIT = re.compile(f"({re.escape(IMAGE)})")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int


class ImageSlot:
    """Marks where an image stands in a pre-training document (its pixels travel separately)."""


def _ids(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def _encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def _encode_with_images(
    tokenizer: PreTrainedTokenizerBase, text: str, image_tokens: int
) -> tuple[list[int], list[bool], int]:
    """Encode text that may contain `<image>` markers; returns ids, an is-image mask and the image count."""
    image_id = _ids(tokenizer, IMAGE)
    ids: list[int] = []
    is_image: list[bool] = []
    count = 0
    for piece in _IMAGE_SPLIT.split(text):
        if piece == IMAGE:
            ids += [image_id] * image_tokens
            is_image += [True] * image_tokens
            count += 1
        elif piece:
            encoded = _encode_text(tokenizer, piece)
            ids += encoded
            is_image += [False] * len(encoded)
    return ids, is_image, count


def encode_document(
    tokenizer: PreTrainedTokenizerBase, parts: Sequence[str | ImageSlot], image_tokens: int
) -> Encoded:
    """A pre-training sample (caption pair, interleaved document or plain text): loss on text tokens only."""
    ids = [_ids(tokenizer, BOS)]
    labels = [IGNORE_INDEX]
    images = 0
    for part in parts:
        if isinstance(part, ImageSlot):
            ids += [_ids(tokenizer, IMAGE)] * image_tokens
            labels += [IGNORE_INDEX] * image_tokens
            images += 1
        else:
            encoded = _encode_text(tokenizer, part)
            ids += encoded
            labels += encoded
    eos = _ids(tokenizer, EOS)
    return Encoded(ids + [eos], labels + [eos], images)


def _turn_header(tokenizer: PreTrainedTokenizerBase, role_token: str) -> list[int]:
    return [_ids(tokenizer, role_token)] + _encode_text(tokenizer, "\n")


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, turns: Sequence[dict], image_tokens: int
) -> Encoded:
    """SFT: turns are {"role": "user"|"assistant", "content": str}; labels only on assistant answers."""
    ids = [_ids(tokenizer, BOS)]
    labels = [IGNORE_INDEX]
    images = 0
    end = [_ids(tokenizer, END)] + _encode_text(tokenizer, "\n")
    for turn in turns:
        role = turn["role"]
        if role == "user":
            body, _, count = _encode_with_images(tokenizer, turn["content"], image_tokens)
            images += count
            chunk = _turn_header(tokenizer, USER) + body + end
            ids += chunk
            labels += [IGNORE_INDEX] * len(chunk)
        elif role == "assistant":
            header = _turn_header(tokenizer, ASSISTANT)
            answer = _encode_text(tokenizer, turn["content"]) + end[:1]
            ids += header + answer + end[1:]
            labels += [IGNORE_INDEX] * len(header) + answer + [IGNORE_INDEX] * len(end[1:])
        else:
            raise ValueError(f"unknown chat role {role!r}: expected 'user' or 'assistant'")
    return Encoded(ids, labels, images)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, turns: Sequence[dict], image_tokens: int) -> Encoded:
    """A generation prompt: the conversation so far, then the assistant header; the model continues."""
    encoded = encode_conversation(tokenizer, turns, image_tokens)
    header = _turn_header(tokenizer, ASSISTANT)
    return Encoded(
        encoded.input_ids + header, encoded.labels + [IGNORE_INDEX] * len(header), encoded.num_images
    )


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Generation ends at the end of the assistant's turn (or at </s>)."""
    return [_ids(tokenizer, END), _ids(tokenizer, EOS)]
