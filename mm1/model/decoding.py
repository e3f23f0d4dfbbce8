"""The one decoder: evaluation and serving answer through it, so they decode alike by construction.

A `Decoder` prefills a group of prompts (left-padded together), then decodes every live row one token per
step with a KV cache. Each `Row` keeps its own stop tokens, suppressed tokens, token budget and position, so
a batch may mix chat prompts and k-shot document prompts, and rows may join a running batch (`Batch.merge`)
or leave it (`Batch.drop_finished`). The KV cache is left-padded: a row admitted later gets extra padding on
the left (masked out), and padding columns no row needs are cut away.

Greedy is the default choice of the next token: the suppressed tokens are masked out, then the argmax. A row
ends at its first stop token (not part of its answer) or when its budget (max tokens, capped by the context)
is spent. Drivers:
- `Decoder.run`: one fixed batch from prefill to the end (evaluation: `generate_answers` here and
  mm1.eval.generation; serving's `Engine.generate`);
- services.scheduler.DecodeLoop: continuous batching over `prefill`/`step` (requests join at step
  boundaries).
services.engine.Engine is this decoder with per-request sampling and streamed text on top.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from mm1.model.modeling import MM1ForConditionalGeneration
from mm1.model.processing import MM1Processor

Chat = tuple[Sequence[dict], Sequence[Any]]  # (turns, image sources)


class DecodeInput(Protocol):
    """A tokenized prompt: ids with image placeholders expanded, its images' pixels (or None)."""

    @property
    def input_ids(self) -> list[int]: ...

    @property
    def pixel_values(self) -> torch.Tensor | None: ...


@dataclass
class ChatPrompt:
    """A chat as MM1Processor.encode_chat tokenizes it."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None


@dataclass(kw_only=True)
class Row:
    """One sequence being decoded."""

    stop_ids: frozenset[int]  # the answer ends at the first of these (not part of it)
    suppress_ids: tuple[int, ...]  # tokens it may not emit
    max_tokens: int
    ignore_stops: bool = False  # generate on through stop tokens (a request's ignore_eos)
    tag: Any = None  # the driver's handle for this row (where its outputs go)
    budget: int = 0  # tokens it may generate in total: max_tokens capped by the context (set by prefill)
    position: int = 0  # position id of the next token fed to the model (set by prefill)
    tokens: list[int] = field(default_factory=list)  # the answer so far (no stop token)
    count: int = 0  # tokens generated
    last_token: int = 0  # chosen, not yet fed
    finished: bool = False

    def accept(self, token: int) -> str | None:
        """Take the chosen token; the finish reason ("stop" | "length") if it ends the row."""
        self.count += 1
        self.last_token = token
        if token in self.stop_ids and not self.ignore_stops:
            self.finished = True
            return "stop"
        self.tokens.append(token)
        if self.count >= self.budget:
            self.finished = True
            return "length"
        return None


R = TypeVar("R", bound=Row)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> input_ids and attention_mask [B, max length], padded on the left for generation."""
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.as_tensor(row, dtype=torch.long)
        mask[i, length - len(row) :] = 1
    return ids, mask


@dataclass
class Batch:
    """Live rows and their KV cache; `mask` [rows, cache length] marks real (1) and padding (0) positions."""

    rows: list[Row]
    cache: DynamicCache
    mask: torch.Tensor
    merged: list[int] = field(default_factory=list)  # sizes of the merges so far (for tests and metrics)

    def mergeable(self) -> bool:
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def merge(self, other: Batch) -> Batch:
        """This batch and `other` as one: both left-padded to the longer cache, rows concatenated."""
        self.compact()
        other.compact()
        length = max(self.mask.shape[1], other.mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = length - t.shape[dim]
            if not missing:
                return t
            widths = [0, 0] * (t.dim() - dim - 1) + [missing, 0]  # F.pad counts dimensions from the last
            return F.pad(t, widths)

        layers = [
            (torch.cat([pad(a.keys, 2), pad(b.keys, 2)]), torch.cat([pad(a.values, 2), pad(b.values, 2)]))
            for a, b in zip(self.cache.layers, other.cache.layers, strict=True)
        ]
        mask = torch.cat([pad(self.mask, 1), pad(other.mask, 1)])
        return Batch(
            self.rows + other.rows, DynamicCache(ddp_cache_data=layers), mask, self.merged + [len(other.rows)]
        )

    @property
    def live(self) -> int:
        return sum(not row.finished for row in self.rows)

    def drop_finished(self) -> None:
        """Forget finished rows once they are a quarter of the batch (or all of it). Removing rows copies the
        whole KV cache, so a few finished rows ride along, idle, rather than costing a copy per step."""
        finished = len(self.rows) - self.live
        if finished and (finished == len(self.rows) or 4 * finished >= len(self.rows)):
            self.compact()

    def compact(self) -> None:
        """Remove finished rows, then the leading cache columns that are padding in every remaining row."""
        keep = [i for i, row in enumerate(self.rows) if not row.finished]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.mask.device)
        real = self.mask[index].any(dim=0).nonzero()
        start = int(real[0]) if len(real) else 0
        self.mask = self.mask[index, start:]
        layers = [
            (layer.keys[index, :, start:], layer.values[index, :, start:]) for layer in self.cache.layers
        ]
        self.cache = DynamicCache(ddp_cache_data=layers)


def suppress(logits: torch.Tensor, rows: Sequence[Row]) -> None:
    """Mask each row's suppressed tokens out of its [vocab] logits, in place."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(rows):
        if row.suppress_ids:
            groups.setdefault(row.suppress_ids, []).append(i)
    for ids, members in groups.items():
        columns = torch.tensor(ids, device=logits.device)
        if len(members) == len(rows):
            logits[:, columns] = float("-inf")
        else:
            logits[torch.tensor(members, device=logits.device)[:, None], columns] = float("-inf")


class Decoder:
    """Prefill, step and the greedy choice over one model; drivers decide which rows run together."""

    def __init__(self, model: MM1ForConditionalGeneration, processor: MM1Processor):
        self.model = model
        self.processor = processor
        self.device = model.device
        self.pad_id = processor.tokenizer.pad_token_id
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.image_token_id = model.config.image_token_id
        self.chat_stop_ids = frozenset(processor.stop_token_ids())  # the end of an assistant turn

    def suppressed(self, stop_ids: frozenset[int] | Sequence[int]) -> tuple[int, ...]:
        """The image placeholder may not be generated (it would have no image behind it), unless it is a
        stop: a pre-trained model ends a k-shot caption by starting the next image."""
        return () if self.image_token_id in stop_ids else (self.image_token_id,)

    def chat_row(self, max_tokens: int, row_type: type[R] = Row, **fields: Any) -> R:
        """A row answering a chat prompt: it ends with the assistant's turn."""
        stops = self.chat_stop_ids
        return row_type(stop_ids=stops, suppress_ids=self.suppressed(stops), max_tokens=max_tokens, **fields)

    @torch.inference_mode()
    def prefill_rows(
        self,
        prompts: Sequence[DecodeInput],
        rows: Sequence[Row],
        embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[Batch, list[Any]]:
        """Run the prompts (left-padded together) and choose each row's first token.

        `embed` (padded input_ids -> input embeddings with the images spliced in) replaces the model's own
        splice of `pixel_values`: mm1.eval.generation encodes each distinct image of a batch once.
        """
        ids, mask = left_pad([p.input_ids for p in prompts], self.pad_id)
        # Positions count real tokens only (pads sit at 0 and are masked out).
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids = ids.to(self.device)
        if embed is not None:
            images = {"inputs_embeds": embed(ids)}
        else:
            pixels = [p.pixel_values for p in prompts if p.pixel_values is not None]
            images = {"pixel_values": torch.cat(pixels).to(self.device, self.model.dtype) if pixels else None}
        out = self.model(
            input_ids=ids,
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **images,
        )
        for prompt, row in zip(prompts, rows, strict=True):
            row.position = len(prompt.input_ids)
            row.budget = min(row.max_tokens, self.context_length - len(prompt.input_ids))
        batch = Batch(list(rows), out.cache, mask.to(self.device))
        return batch, self._advance(batch.rows, out.logits[:, -1, :])

    @torch.inference_mode()
    def step(self, batch: Batch) -> list[Any]:
        """Feed every row its last token and choose the next one: one output per row, in order (None for a
        finished row still riding along)."""
        rows = batch.rows
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(rows), 1))], dim=-1)
        out = self.model(
            input_ids=torch.tensor([[r.last_token] for r in rows], device=self.device),
            attention_mask=batch.mask,
            position_ids=torch.tensor([[r.position] for r in rows], device=self.device),
            cache=batch.cache,
            use_cache=True,
        )
        batch.cache = out.cache
        for row in rows:
            row.position += 1
        return self._advance(rows, out.logits[:, -1, :])

    def run(
        self,
        prompts: Sequence[DecodeInput],
        rows: Sequence[Row],
        embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Iterator[list[Any]]:
        """One fixed batch from prefill to the end: after each step, one output per prompt (None once done)."""
        batch, outputs = self.prefill_rows(prompts, rows, embed)
        yield list(outputs)
        batch.drop_finished()
        while batch.live:
            by_row = dict(zip(map(id, batch.rows), self.step(batch), strict=True))
            yield [by_row.get(id(row)) for row in rows]
            batch.drop_finished()

    def choose(self, rows: Sequence[Row], logits: torch.Tensor) -> list[int]:
        """The next token of every row (finished ones included, and ignored): greedy."""
        suppress(logits, rows)
        return logits.argmax(dim=-1).tolist()

    def output(self, row: Row, token: int, reason: str | None) -> Any:
        """What a step reports for a live row that took `token`: here its finish reason."""
        return reason

    def _advance(self, rows: Sequence[Row], logits: torch.Tensor) -> list[Any]:
        tokens = self.choose(rows, logits)
        return [
            None if row.finished else self.output(row, token, row.accept(token))
            for row, token in zip(rows, tokens, strict=True)
        ]

    def answers(
        self,
        prompts: Sequence[DecodeInput],
        rows: Sequence[Row],
        embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> list[str]:
        """Decode one fixed batch to the end: each row's answer as text, special tokens dropped, stripped."""
        for _ in self.run(prompts, rows, embed):
            pass
        return [self.processor.decode(row.tokens).strip() for row in rows]


def generate_answers(
    model: MM1ForConditionalGeneration,
    processor: MM1Processor,
    chats: Sequence[Chat],
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers to (turns, images) chats, `batch_size` at a time; each answer ends at the first stop
    token (mm1.data.chat.stop_token_ids) and is returned without special tokens."""
    decoder = Decoder(model, processor)
    answers: list[str] = []
    for start in range(0, len(chats), batch_size):
        encoded = [
            processor.encode_chat(turns, images) for turns, images in chats[start : start + batch_size]
        ]
        prompts = [ChatPrompt(e["input_ids"][0].tolist(), e["pixel_values"]) for e in encoded]
        answers += decoder.answers(prompts, [decoder.chat_row(max_new_tokens) for _ in prompts])
    return answers
