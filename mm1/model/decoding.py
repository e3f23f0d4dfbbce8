"""The one decoder: evaluation and serving answer through it, so they decode alike by construction.

A `Decoder` prefills a group of prompts (left-padded together), then decodes every live row one token per
step with a KV cache. Each `Row` keeps its own stop tokens, suppressed tokens, token budget and position, so
a batch may mix chat prompts and k-shot document prompts, and rows may join a running batch (`Batch.merge`)
or leave it (`Batch.drop_finished`). The KV cache is left-padded: a row admitted later gets extra padding on
the left (masked out), and padding columns no row needs are cut away.

Greedy is the default choice of the next token: the suppressed tokens are masked out, then (for a row with a
`Constraint`, e.g. a JSON schema's grammar) every token its grammar forbids, then the argmax. Rows without a
constraint pay nothing for it, so every row of a batch may carry its own grammar or none. A row that asks for
log-probabilities (`Row.top_logprobs`) gets, per generated token, the model's raw log-softmax (before any
mask or temperature) of that token and of its most likely alternatives. A row ends at its first stop token
(not part of its answer) or when its budget (max tokens, capped by the context) is spent. Drivers:
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

from mm1.model.kv_cache import GrowingLayer, appendable, growing_cache, make_growing, stacked_cache
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


class Constraint(Protocol):
    """What a row's answer must follow, token by token (services.grammar: an llguidance grammar)."""

    def fill_mask(self, words: torch.Tensor) -> None:
        """Write the tokens allowed next as bits into `words` (int32, zeros, token t = bit t % 32 of word
        t // 32), the stop tokens among them where the answer may end here."""
        ...

    def consume(self, token: int) -> None:
        """Advance past a generated token (never a stop token)."""
        ...


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability, and the `top` most likely tokens at its step: (id, logprob)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(kw_only=True)
class Row:
    """One sequence being decoded."""

    stop_ids: frozenset[int]  # the answer ends at the first of these (not part of it)
    suppress_ids: tuple[int, ...]  # tokens it may not emit
    max_tokens: int
    ignore_stops: bool = False  # generate on through stop tokens (a request's ignore_eos)
    constraint: Constraint | None = None  # a grammar masking the logits at every step (None: free)
    top_logprobs: int | None = None  # None: no log-probabilities; K: the chosen token's and the top K's
    tag: Any = None  # the driver's handle for this row (where its outputs go)
    budget: int = 0  # tokens it may generate in total: max_tokens capped by the context (set by prefill)
    position: int = 0  # position id of the next token fed to the model (set by prefill)
    tokens: list[int] = field(default_factory=list)  # the answer so far (no stop token)
    count: int = 0  # tokens generated
    last_token: int = 0  # chosen, not yet fed
    finished: bool = False
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token of `tokens` (top_logprobs set)

    def accept(self, token: int, logprob: TokenLogprob | None = None) -> str | None:
        """Take the chosen token; the finish reason ("stop" | "length") if it ends the row."""
        self.count += 1
        self.last_token = token
        if token in self.stop_ids and not self.ignore_stops:
            self.finished = True
            return "stop"
        self.tokens.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        if self.constraint is not None:
            self.constraint.consume(token)
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
        return all(appendable(layer) for layer in self.cache.layers)

    def merge(self, other: Batch) -> Batch:
        """This batch and `other` as one: both left-padded to the longer cache (without the leading columns
        that are padding in every row of a batch), rows concatenated. The one copy of the whole cache."""
        self.compact()
        other.compact()
        starts = [_first_real_column(b.mask) for b in (self, other)]
        masks = [b.mask[:, start:] for b, start in zip((self, other), starts, strict=True)]
        length = max(m.shape[1] for m in masks)
        groups = [
            [(layer.keys[:, :, start:], layer.values[:, :, start:]) for layer in b.cache.layers]
            for b, start in zip((self, other), starts, strict=True)
        ]
        mask = torch.cat([F.pad(m, [length - m.shape[1], 0]) for m in masks])
        return Batch(
            self.rows + other.rows, stacked_cache(groups, length), mask, self.merged + [len(other.rows)]
        )

    @property
    def live(self) -> int:
        return sum(not row.finished for row in self.rows)

    def drop_finished(self) -> None:
        """Forget finished rows: at once where the cache removes rows in place (each finished row would
        otherwise be computed at every step), else once they are a quarter of the batch (or all of it),
        since removing rows then copies the whole KV cache."""
        finished = len(self.rows) - self.live
        if finished and (self._in_place() or finished == len(self.rows) or 4 * finished >= len(self.rows)):
            self.compact()

    def _in_place(self) -> bool:
        return all(isinstance(layer, GrowingLayer) and layer.owns_view() for layer in self.cache.layers)

    def compact(self) -> None:
        """Remove finished rows. Where the cache allows (`GrowingLayer`s), in place: the live rows past the
        last slot kept move into the finished rows' slots, so only they are copied (row order changes), and
        the leading columns that are now padding in every row (the longest row left) are dropped from the
        cache's views without a copy. Otherwise the live rows are copied into a new cache, without those
        leading columns."""
        keep = [i for i, row in enumerate(self.rows) if not row.finished]
        if len(keep) == len(self.rows):
            return
        if keep and self._in_place():
            self._compact_in_place(keep)
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.mask.device)
        start = _first_real_column(self.mask[index])
        self.mask = self.mask[index, start:]
        layers = [
            (layer.keys[index, :, start:], layer.values[index, :, start:]) for layer in self.cache.layers
        ]
        self.cache = growing_cache(layers)

    @torch.inference_mode()  # the cache and mask are the decoder's inference tensors: updated in place
    def _compact_in_place(self, keep: list[int]) -> None:
        size = len(keep)
        holes = [i for i in range(size) if self.rows[i].finished]
        movers = [i for i in keep if i >= size]  # as many as holes
        if movers:
            sources = torch.tensor(movers, device=self.mask.device)
            targets = torch.tensor(holes, device=self.mask.device)
            for layer in self.cache.layers:
                layer.move_rows(sources, targets)
            self.mask[targets] = self.mask[sources]
            for hole, mover in zip(holes, movers, strict=True):
                self.rows[hole] = self.rows[mover]
        for layer in self.cache.layers:
            layer.keep_rows(size)
        self.rows = self.rows[:size]
        self.mask = self.mask[:size]
        start = _first_real_column(self.mask)
        if start:
            for layer in self.cache.layers:
                layer.drop_leading(start)
            self.mask = self.mask[:, start:]


def _first_real_column(mask: torch.Tensor) -> int:
    """The first cache column that is real (1) in some row: the columns before it are padding everywhere."""
    real = mask.any(dim=0).nonzero()
    return int(real[0]) if len(real) else 0


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


def constrain(logits: torch.Tensor, rows: Sequence[Row]) -> None:
    """Mask out of each constrained row's [vocab] logits every token its grammar forbids, in place."""
    members = [i for i, row in enumerate(rows) if row.constraint is not None and not row.finished]
    if not members:
        return
    vocab = logits.shape[-1]
    words = torch.zeros((len(members), (vocab + 31) // 32), dtype=torch.int32)
    for j, i in enumerate(members):
        rows[i].constraint.fill_mask(words[j])
    bits = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1  # [members, words, 32]
    allowed = bits.reshape(len(members), -1)[:, :vocab].bool().to(logits.device)
    index = torch.tensor(members, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


def raw_logprobs(
    logits: torch.Tensor, rows: Sequence[Row]
) -> tuple[list[int], torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """For the live rows that ask for log-probabilities: their indices, their log-softmax over the raw logits
    (before suppression, grammar and temperature: the model's own distribution, as vLLM's default
    `raw_logprobs`; training's forward gives the same numbers), and their top-K (values, ids) at the
    largest K asked for (None when no row asks for alternatives)."""
    members = [i for i, row in enumerate(rows) if row.top_logprobs is not None and not row.finished]
    if not members:
        return [], logits.new_empty(0), None, None
    logprobs = torch.log_softmax(logits[members].float(), dim=-1)
    k = max(rows[i].top_logprobs or 0 for i in members)
    if not k:
        return members, logprobs, None, None
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return members, logprobs, values, ids


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
        batch = Batch(list(rows), make_growing(out.cache), mask.to(self.device))
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
        """The next token of every row (finished ones included, and ignored): greedy among the tokens the
        row may emit (its suppressed tokens and its grammar's forbidden ones masked out, in place)."""
        suppress(logits, rows)
        constrain(logits, rows)
        return logits.argmax(dim=-1).tolist()

    def output(self, row: Row, token: int, reason: str | None) -> Any:
        """What a step reports for a live row that took `token`: here its finish reason."""
        return reason

    def _advance(self, rows: Sequence[Row], logits: torch.Tensor) -> list[Any]:
        members, logprobs, top_values, top_ids = raw_logprobs(logits, rows)  # before `choose` masks
        tokens = self.choose(rows, logits)
        entries: dict[int, TokenLogprob] = {}
        if members:
            chosen = logprobs.gather(-1, torch.tensor([[tokens[i]] for i in members], device=logits.device))
            chosen_list = chosen[:, 0].tolist()
            values = top_values.tolist() if top_values is not None else None
            ids = top_ids.tolist() if top_ids is not None else None
            for j, i in enumerate(members):
                k = rows[i].top_logprobs or 0
                top = tuple(zip(ids[j][:k], values[j][:k], strict=True)) if k and ids is not None else ()
                entries[i] = TokenLogprob(tokens[i], chosen_list[j], top)
        return [
            None if row.finished else self.output(row, token, row.accept(token, entries.get(i)))
            for i, (row, token) in enumerate(zip(rows, tokens, strict=True))
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
