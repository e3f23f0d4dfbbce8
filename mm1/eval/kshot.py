"""k-shot prompts: k image-text demonstrations, then the query image (and, for VQA, its question).

Two tasks, as MM1 (and Flamingo before it) prompt pre-trained models in context:
- "caption": each demonstration is an image and its caption; the model continues after the query image.
- "vqa": each demonstration is an image and `question: Q answer: A` (VQA_TEMPLATE); the query is its image and
  `question: Q answer:`, and the model continues with the answer.

Two prompt styles, both built by the shared template in `mm1.data.chat` (never a second template):
- "document" (pre-trained checkpoints): the pre-training document form
  `<s><image>caption<image>caption ... <image>`, built with `encode_document` minus its closing `</s>`; the
  model continues with the query's caption (answer) and stops at `</s>` or when it starts another image.
- "chat" (SFT checkpoints): one user turn `<image>\\n{instruction}` (VQA: `<image>\\n{question}`) per image,
  the demonstrations' captions (answers) as the assistant's answers, and the query's user turn last, built
  with `encode_prompt` (which ends with the assistant header); the model stops at `<|end|>`.
`style_for_stage` names the style a checkpoint gets and `KShotPrompt.style` records the one used, so the
evaluation results and the report can say which it was.

Demonstrations are drawn without replacement from a pool that never yields the query itself (same key) nor
any demonstration showing the query's image (same `image_key`: a VQAv2 image has several questions).
The draw depends only on (seed, query key, the pool's keys): a given query gets the same demonstrations in
every run, on every worker, whatever the order of the pool or of evaluation (random.Random seeded by a
string is stable across processes).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from mm1.data.chat import IMAGE, ImageSlot, encode_document, encode_prompt, stop_token_ids

PromptStyle = Literal["document", "chat"]
KShotTask = Literal["caption", "vqa"]
# The Shapes caption question (SHAPES.md); SFT checkpoints were taught to caption when asked this.
CAPTION_INSTRUCTION = "describe the image."
# The text after each image of a k-shot VQA document: lower case, like the Shapes world's text.
VQA_TEMPLATE = "question: {question} answer:"


@dataclass(frozen=True)
class Demo:
    key: Hashable  # identifies the image: the query's own key is never drawn as a demonstration
    image: Any  # anything mm1.data.preprocess.load_image accepts (path, bytes, array, PIL image)
    caption: str  # the text the demonstration shows after its image: its caption, or (VQA) its answer
    question: str = ""  # VQA: the question asked about the image ("" for captions)
    image_key: Hashable = None  # identifies the image when several demonstrations share one (VQA); None: key

    @property
    def image_id(self) -> Hashable:
        return self.key if self.image_key is None else self.image_key


@dataclass(frozen=True)
class KShotPrompt:
    style: PromptStyle
    input_ids: list[int]
    images: list[Any]  # one per <image> run in input_ids, in order: the demonstrations', then the query's
    demos: list[Demo] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    # What input_ids were built from, for callers that encode through a processor (MM1Processor.encode_chat):
    turns: list[dict] = field(default_factory=list)  # chat style: the conversation, query turn last
    parts: list[str | ImageSlot] = field(default_factory=list)  # document style: text and image slots


def style_for_stage(stage: str) -> PromptStyle:
    """Pre-trained checkpoints get the document prompt they were trained on; fine-tuned ones the chat prompt."""
    if stage == "pretrain":
        return "document"
    if stage == "sft":
        return "chat"
    raise ValueError(f"unknown training stage {stage!r}: expected 'pretrain' or 'sft'")


def draw_demos(
    pool: Sequence[Demo], k: int, seed: int, query_key: Hashable, query_image: Hashable = None
) -> list[Demo]:
    """k distinct demonstrations from `pool`, never the query nor one showing `query_image` (a `Demo.image_id`);
    deterministic for (seed, query_key)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    # Sorted by key so the draw does not depend on the order the pool was read in (shards, workers).
    candidates = sorted(
        (d for d in pool if d.key != query_key and (query_image is None or d.image_id != query_image)),
        key=lambda d: repr(d.key),
    )
    if k > len(candidates):
        raise ValueError(
            f"k={k} demonstrations requested but the pool holds only {len(candidates)} besides the query "
            f"{query_key!r}"
        )
    rng = random.Random(f"{seed}:{query_key!r}")
    return rng.sample(candidates, k)


def document_parts(
    demos: Sequence[Demo], task: KShotTask = "caption", question: str = ""
) -> list[str | ImageSlot]:
    """Caption: `<image>caption ... <image>`; VQA: `<image>question: Q answer: A ... <image>question: Q answer:`."""
    parts: list[str | ImageSlot] = []
    if task == "caption":
        for demo in demos:
            parts += [ImageSlot(), demo.caption]
        return parts + [ImageSlot()]
    if task == "vqa":
        for demo in demos:
            parts += [ImageSlot(), f"{VQA_TEMPLATE.format(question=demo.question)} {demo.caption}"]
        return parts + [ImageSlot(), VQA_TEMPLATE.format(question=question)]
    raise ValueError(f"unknown k-shot task {task!r}: expected 'caption' or 'vqa'")


def chat_turns(
    demos: Sequence[Demo], instruction: str = CAPTION_INSTRUCTION, task: KShotTask = "caption"
) -> list[dict]:
    """One user turn per image (VQA: its question; captions: `instruction`), the demonstrations answered."""

    def user(text: str) -> dict:
        return {"role": "user", "content": f"{IMAGE}\n{text}"}

    turns: list[dict] = []
    for demo in demos:
        turns += [user(demo.question if task == "vqa" else instruction)]
        turns += [{"role": "assistant", "content": demo.caption}]
    return turns + [user(instruction)]


def _document_prompt(
    tokenizer: PreTrainedTokenizerBase, parts: Sequence[str | ImageSlot], image_tokens: int
) -> tuple[list[int], list[int]]:
    ids = encode_document(tokenizer, parts, image_tokens).input_ids
    eos = tokenizer.eos_token_id  # the tokenizer's own (an LLM's, e.g. <|endoftext|>; ours is </s>)
    if ids[-1] != eos:  # the shared template changed under us: fail loudly rather than prompt wrongly
        raise RuntimeError("mm1.data.chat.encode_document no longer ends a document with the eos token")
    # A pre-trained model ends a caption with eos, or runs on into the next image of a document.
    return ids[:-1], [eos, tokenizer.convert_tokens_to_ids(IMAGE)]


def _chat_prompt(
    tokenizer: PreTrainedTokenizerBase, turns: Sequence[dict], image_tokens: int
) -> tuple[list[int], list[int]]:
    return encode_prompt(tokenizer, turns, image_tokens).input_ids, stop_token_ids(tokenizer)


def build_kshot_prompt(
    tokenizer: PreTrainedTokenizerBase,
    query: Demo,
    pool: Sequence[Demo],
    k: int,
    seed: int,
    image_tokens: int,
    style: PromptStyle = "document",
    instruction: str = CAPTION_INSTRUCTION,
    task: KShotTask = "caption",
) -> KShotPrompt:
    """The prompt asking for `query`'s caption (task "caption") or the answer to `query.question` (task "vqa")
    after k demonstrations drawn from `pool`, none of them showing the query's image.

    `query.caption` is not used (it is the answer); `instruction` matters only for the chat style of captions.
    """
    if task not in ("caption", "vqa"):
        raise ValueError(f"unknown k-shot task {task!r}: expected 'caption' or 'vqa'")
    demos = draw_demos(pool, k, seed, query.key, query.image_id)
    images = [d.image for d in demos] + [query.image]
    if style == "document":
        parts = document_parts(demos, task, query.question)
        ids, stops = _document_prompt(tokenizer, parts, image_tokens)
        return KShotPrompt(style, ids, images, demos, stops, parts=parts)
    if style == "chat":
        turns = chat_turns(demos, query.question if task == "vqa" else instruction, task)
        ids, stops = _chat_prompt(tokenizer, turns, image_tokens)
        return KShotPrompt(style, ids, images, demos, stops, turns=turns)
    raise ValueError(f"unknown prompt style {style!r}: expected 'document' or 'chat'")
