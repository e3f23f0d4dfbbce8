"""Step-wise decoding of a changing batch: prefill a group of prompts, decode every live row one token per
step, merge newly prefilled rows into the live batch, drop finished rows.

The pieces (`Engine.prefill`, `Engine.step`, `Batch.merge`, `Batch.drop_finished`) serve two drivers:
`Engine.generate` (one fixed batch, start to end: tests and the benchmark's in-process baseline) and
services.scheduler.DecodeLoop (continuous batching: requests join at step boundaries).

Rows keep their own sampling settings, stop strings, budgets and positions. The KV cache is left-padded: a row
admitted later gets extra padding on the left (masked out), and padding columns no row needs are cut away.

Greedy decoding matches `mm1.model.loading.generate_answers` (eval's decoder) token for token: the same
prompt encoding (MM1Processor.encode_chat), the same stop tokens and the same suppressed image placeholder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from mm1.model import MM1ForConditionalGeneration, MM1Processor
from services.sampling import SamplingParams, make_generator, sample_next
from services.textstream import TextStream


@dataclass
class Prompt:
    """A tokenized request: ids with image placeholders expanded, the images' pixels, how to sample."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None
    params: SamplingParams


@dataclass
class StepOutput:
    text: str  # new text released by this step (may be empty)
    completion_tokens: int  # tokens generated so far
    finish_reason: str | None = None  # "stop" | "length" once finished


@dataclass
class Row:
    """One sequence being decoded."""

    params: SamplingParams
    stream: TextStream
    generator: torch.Generator
    budget: int  # tokens it may still generate in total (max_tokens, capped by the context)
    position: int  # position id of the next token fed to the model
    tag: Any = None  # the driver's handle for this row (where its outputs go)
    count: int = 0  # tokens generated
    last_token: int = 0  # sampled, not yet fed
    finished: bool = False


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


class Engine:
    def __init__(self, model: MM1ForConditionalGeneration, processor: MM1Processor):
        self.model = model
        self.processor = processor
        self.device = model.device
        self.stop_ids = frozenset(processor.stop_token_ids())
        self.pad_id = processor.tokenizer.pad_token_id
        self.context_length = int(model.config.text_config.max_position_embeddings)
        # A generated image placeholder would have no image behind it (generate_answers suppresses it too).
        self.suppressed = [model.config.image_token_id]

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    @torch.inference_mode()
    def prefill(
        self, prompts: Sequence[Prompt], tags: Sequence[Any] | None = None
    ) -> tuple[Batch, list[StepOutput]]:
        """Run the prompts (left-padded together) and sample each one's first token."""
        length = max(len(p.input_ids) for p in prompts)
        ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, length - len(prompt.input_ids) :] = torch.tensor(prompt.input_ids)
            mask[i, length - len(prompt.input_ids) :] = 1
        # Positions count real tokens only (pads sit at 0 and are masked out).
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        pixels = [p.pixel_values for p in prompts if p.pixel_values is not None]
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            pixel_values=torch.cat(pixels).to(self.device, self.model.dtype) if pixels else None,
            use_cache=True,
            logits_to_keep=1,
        )
        rows = [
            Row(
                params=p.params,
                stream=TextStream(self.decode, p.params.stop),
                generator=make_generator(p.params.seed, self.device),
                budget=min(p.params.max_tokens, self.context_length - len(p.input_ids)),
                position=len(p.input_ids),
                tag=tags[i] if tags is not None else None,
            )
            for i, p in enumerate(prompts)
        ]
        batch = Batch(rows, out.cache, mask.to(self.device))
        return batch, self._sample(batch.rows, out.logits[:, -1, :])

    @torch.inference_mode()
    def step(self, batch: Batch) -> list[StepOutput | None]:
        """Feed every row its last sampled token and sample the next one: one output per row, in order
        (None for a finished row still riding along)."""
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
        return self._sample(rows, out.logits[:, -1, :])

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> list[StepOutput | None]:
        logits[:, self.suppressed] = float("-inf")
        greedy = logits.argmax(dim=-1).tolist()
        outputs: list[StepOutput | None] = []
        for i, row in enumerate(rows):
            if row.finished:
                outputs.append(None)
                continue
            params = row.params
            token = greedy[i] if params.temperature == 0 else sample_next(logits[i], params, row.generator)
            row.count += 1
            row.last_token = token
            output = self._advance(row, token)
            row.finished = output.finish_reason is not None
            outputs.append(output)
        return outputs

    def _advance(self, row: Row, token: int) -> StepOutput:
        if token in self.stop_ids and not row.params.ignore_eos:
            return StepOutput(row.stream.flush(), row.count, "stop")
        text = row.stream.push(token)
        if row.stream.stopped:
            return StepOutput(text, row.count, "stop")
        if row.count >= row.budget:
            return StepOutput(text + row.stream.flush(), row.count, "length")
        return StepOutput(text, row.count)

    def generate(self, prompts: Sequence[Prompt]) -> Iterator[list[StepOutput | None]]:
        """One fixed batch from prefill to the end: after each step, one entry per prompt (None once done)."""
        batch, outputs = self.prefill(prompts)
        rows = list(batch.rows)
        yield list(outputs)
        batch.drop_finished()
        while batch.live:
            by_row = dict(zip(map(id, batch.rows), self.step(batch), strict=True))
            yield [by_row.get(id(row)) for row in rows]
            batch.drop_finished()
