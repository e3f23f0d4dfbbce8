"""The chat template and label masking: one code path for pre-training, SFT, evaluation and serving.

Which template: the tokenizer's own (`tokenizer.chat_template`, e.g. the LLM named by `model.llm`) when it has
one, ours otherwise. An image is one `<image>` placeholder in user-facing text; here it is expanded to
`image_tokens` copies of the image token id, which the model replaces by image features. Turns are
{"role": "system"|"user"|"assistant", "content": str}.

Our template (built from token ids directly, never by formatting a string and re-tokenizing):
    <s><|user|>\n{user text}<|end|>\n<|assistant|>\n{answer}<|end|>\n ...
It has no system role: system text goes before the first user message's text, one line each.
Loss (labels != -100) falls on the assistant's answers and their closing <|end|> only.

The tokenizer's own template (a Jinja template, rendered by `apply_chat_template`, then tokenized once with
no added special tokens, as transformers does): loss falls on each assistant turn's content and on the
special token that closes it (<|im_end|>, <|eot_id|>, ...), so the model learns to stop; everything else (system
prompt, headers, user turns, whitespace the template adds) is masked. Assistant spans are found by rendering
prefixes of the conversation: the text of turns[:i] with the generation prompt ends where answer i begins, and
turns[:i + 1] ends after its closing token. We use this rather than the `{% generation %}` markers of
`return_assistant_tokens_mask` because few LLM templates ship those markers (Llama 3, Qwen2 and Mistral do
not), while every chat template must be prefix-stable in exactly this way for serving to work (a prompt is
the conversation so far plus the generation prompt). A template that is not is refused, loudly, naming the
turn. A template that refuses a system role gets the system text folded into the first user turn, as ours.

Pre-training documents: {bos}{text and images in document order}{eos}, loss on every text token after bos
(bos and eos are the tokenizer's own; a tokenizer without a bos token starts with the text).
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
ROLES = ("system", "user", "assistant")


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
    bos = tokenizer.bos_token_id
    ids = [] if bos is None else [bos]
    labels = [IGNORE_INDEX] * len(ids)
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
    eos = tokenizer.eos_token_id
    return Encoded(ids + [eos], labels + [eos], images)


def _turn_header(tokenizer: PreTrainedTokenizerBase, role_token: str) -> list[int]:
    return [_ids(tokenizer, role_token)] + _encode_text(tokenizer, "\n")


def has_own_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries a chat template (then it, not ours, formats every chat)."""
    return bool(getattr(tokenizer, "chat_template", None))


def fold_system(turns: Sequence[dict]) -> list[dict]:
    """System turns' text moved before the first user turn's text (one line each), for a template without a
    system role."""
    system = [t["content"] for t in turns if t["role"] == "system"]
    rest = [dict(t) for t in turns if t["role"] != "system"]
    if system:
        first_user = next((t for t in rest if t["role"] == "user"), None)
        if first_user is None:
            raise ValueError("a conversation with a system message needs a user message")
        first_user["content"] = "\n".join([*system, first_user["content"]])
    return rest


def _check_roles(turns: Sequence[dict]) -> None:
    for turn in turns:
        if turn["role"] not in ROLES:
            raise ValueError(f"unknown chat role {turn['role']!r}: expected one of {', '.join(ROLES)}")


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, turns: Sequence[dict], image_tokens: int
) -> Encoded:
    """SFT: labels only on the assistant's answers (see the module docstring for each template)."""
    _check_roles(turns)
    if has_own_template(tokenizer):
        return _encode_with_template(tokenizer, turns, image_tokens, add_generation_prompt=False)
    return _encode_ours(tokenizer, fold_system(turns), image_tokens)


def _encode_ours(tokenizer: PreTrainedTokenizerBase, turns: Sequence[dict], image_tokens: int) -> Encoded:
    bos = tokenizer.bos_token_id
    ids = [] if bos is None else [bos]
    labels = [IGNORE_INDEX] * len(ids)
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
        else:
            header = _turn_header(tokenizer, ASSISTANT)
            answer = _encode_text(tokenizer, turn["content"]) + end[:1]
            ids += header + answer + end[1:]
            labels += [IGNORE_INDEX] * len(header) + answer + [IGNORE_INDEX] * len(end[1:])
    return Encoded(ids, labels, images)


def _render(tokenizer: PreTrainedTokenizerBase, turns: Sequence[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        [{"role": t["role"], "content": t["content"]} for t in turns],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def _template_turns(tokenizer: PreTrainedTokenizerBase, turns: Sequence[dict]) -> list[dict]:
    """`turns`, with system text folded into the first user turn if the template refuses a system role."""
    turns = list(turns)
    if any(t["role"] == "system" for t in turns):
        try:
            _render(tokenizer, turns, add_generation_prompt=False)
        except Exception:  # jinja's raise_exception: e.g. "System role not supported"
            return fold_system(turns)
    return turns


def _closing_token(tokenizer: PreTrainedTokenizerBase, rest: str) -> str:
    """The special token that starts `rest` (the text right after an answer), or "" if none does."""
    specials = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len)
    return next((t for t in reversed(specials) if t and rest.startswith(t)), "")


def _assistant_spans(
    tokenizer: PreTrainedTokenizerBase, turns: list[dict], text: str
) -> list[tuple[int, int]]:
    """Character spans of `text` (the whole conversation rendered) that carry loss: each assistant answer and
    the special token closing it."""
    spans = []
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, turns[:i], add_generation_prompt=True)
        through = _render(tokenizer, turns[: i + 1], add_generation_prompt=False)
        start, answer = len(before), turn["content"]
        if not (
            text.startswith(through) and through.startswith(before) and through[start:].startswith(answer)
        ):
            raise ValueError(
                f"the tokenizer's chat template is not prefix-stable at turn {i} (assistant): the conversation "
                "up to it plus the generation prompt is not where its answer starts in the whole rendering, so "
                "its answer cannot be located for label masking; use a template that renders turns in order, "
                "or set data.tokenizer to one without a template (ours is used then)"
            )
        end = start + len(answer)
        spans.append((start, end + len(_closing_token(tokenizer, through[end:]))))
    return spans


def _expand_images(ids: list[int], labels: list[int], image_id: int, image_tokens: int) -> Encoded:
    out_ids: list[int] = []
    out_labels: list[int] = []
    count = 0
    for token, label in zip(ids, labels, strict=True):
        if token == image_id:
            out_ids += [image_id] * image_tokens
            out_labels += [IGNORE_INDEX] * image_tokens
            count += 1
        else:
            out_ids.append(token)
            out_labels.append(label)
    return Encoded(out_ids, out_labels, count)


def _encode_with_template(
    tokenizer: PreTrainedTokenizerBase, turns: Sequence[dict], image_tokens: int, add_generation_prompt: bool
) -> Encoded:
    turns = _template_turns(tokenizer, turns)
    text = _render(tokenizer, turns, add_generation_prompt)
    spans = [] if add_generation_prompt else _assistant_spans(tokenizer, turns, text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        token if any(s <= start < e for s, e in spans) else IGNORE_INDEX
        for token, (start, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return _expand_images(ids, labels, _ids(tokenizer, IMAGE), image_tokens)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, turns: Sequence[dict], image_tokens: int) -> Encoded:
    """A generation prompt: the conversation so far, then the assistant header; the model continues."""
    _check_roles(turns)
    if has_own_template(tokenizer):
        return _encode_with_template(tokenizer, turns, image_tokens, add_generation_prompt=True)
    encoded = _encode_ours(tokenizer, fold_system(turns), image_tokens)
    header = _turn_header(tokenizer, ASSISTANT)
    return Encoded(
        encoded.input_ids + header, encoded.labels + [IGNORE_INDEX] * len(header), encoded.num_images
    )


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Generation ends at the end of the assistant's turn (or at the tokenizer's eos)."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    if not has_own_template(tokenizer):
        return [_ids(tokenizer, END), *eos]
    turns = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]
    through = _render(tokenizer, turns, add_generation_prompt=False)
    before = _render(tokenizer, turns[:1], add_generation_prompt=True)
    closing = _closing_token(tokenizer, through[len(before) + 1 :])
    ids = [_ids(tokenizer, closing)] if closing else []
    return ids + [i for i in eos if i not in ids]


def reserved_tokens(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """Strings a user's text may not contain: they would tokenize as a special token (an image without
    pixels, a forged turn boundary)."""
    return set(SPECIAL_TOKENS) | set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
