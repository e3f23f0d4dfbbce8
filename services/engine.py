"""The serving engine: mm1.model.decoding's `Decoder` (the one decoder, which evaluation uses too) with
per-request sampling and streamed text on top.

The pieces (`Engine.prefill`, `Engine.step`, `Batch.merge`, `Batch.drop_finished`) serve two drivers:
`Engine.generate` (one fixed batch, start to end: tests and the benchmark's in-process baseline) and
services.scheduler.DecodeLoop (continuous batching: requests join at step boundaries).

Rows keep their own sampling settings, stop strings, budgets and positions, and optionally their own
response_format grammar (`Prompt.constraint`, services.grammar) and log-probabilities (`params.logprobs`),
both handled by the decoder's `choose` for every driver. Greedy rows (temperature 0) take
the decoder's own greedy choice, so a served greedy answer is evaluation's answer token for token: the same
prompt encoding (MM1Processor.encode_chat), the same stop tokens and the same suppressed image placeholder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mm1.model.decoding import Batch, Constraint, Decoder, Row, TokenLogprob
from services.sampling import SamplingParams, make_generator, sample_next
from services.textstream import TextStream, answer_decoder

__all__ = ["Batch", "Engine", "Prompt", "ServedRow", "StepOutput"]


@dataclass
class Prompt:
    """A tokenized request: ids with image placeholders expanded, the images' pixels, how to sample."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None
    params: SamplingParams
    constraint: Constraint | None = None  # response_format's grammar (services.grammar), this choice's own
    # False: the caller reads only the whole answer (a non-streamed request), so its stream need not wake the
    # replica's event loop for the chunks in between.
    streamed: bool = True


@dataclass
class StepOutput:
    text: str  # new text released by this step (may be empty)
    completion_tokens: int  # tokens generated so far
    finish_reason: str | None = None  # "stop" | "length" once finished
    # Log-probabilities of the tokens generated since the last output that carried any (params.logprobs set):
    # they leave with the text they make (a token whose text is held back waits for it) or with the end.
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(kw_only=True)
class ServedRow(Row):
    """A decoder row with its request's sampling settings, random generator and text stream."""

    params: SamplingParams
    stream: TextStream
    generator: torch.Generator
    logprobs_sent: int = 0  # entries of `logprobs` already in an output


class Engine(Decoder):
    def __init__(self, model: Any, processor: Any):
        super().__init__(model, processor)
        # processor.decode's text (special tokens skipped), without the tokenizer wrapper's cost per call.
        self._decode_answer = answer_decoder(processor.tokenizer)

    def decode(self, ids: list[int]) -> str:
        return self._decode_answer(ids)

    def _rows(self, prompts: Sequence[Prompt], tags: Sequence[Any] | None) -> list[ServedRow]:
        return [
            self.chat_row(
                p.params.max_tokens,
                ServedRow,
                ignore_stops=p.params.ignore_eos,
                constraint=p.constraint,
                top_logprobs=p.params.logprobs,
                tag=tags[i] if tags is not None else None,
                params=p.params,
                stream=TextStream(self.decode, p.params.stop),
                generator=make_generator(p.params.seed, self.device),
            )
            for i, p in enumerate(prompts)
        ]

    def prefill(
        self, prompts: Sequence[Prompt], tags: Sequence[Any] | None = None
    ) -> tuple[Batch, list[StepOutput]]:
        """Run the prompts (left-padded together) and sample each one's first token."""
        return self.prefill_rows(prompts, self._rows(prompts, tags))

    def generate(self, prompts: Sequence[Prompt]) -> Iterator[list[StepOutput | None]]:
        """One fixed batch from prefill to the end: after each step, one entry per prompt (None once done)."""
        return self.run(prompts, self._rows(prompts, None))

    def choose(self, rows: Sequence[ServedRow], logits: torch.Tensor) -> list[int]:
        greedy = super().choose(rows, logits)  # suppresses in place: sampled rows never draw them either
        return [
            token
            if row.finished or row.params.temperature == 0
            else sample_next(logits[i], row.params, row.generator)
            for i, (row, token) in enumerate(zip(rows, greedy, strict=True))
        ]

    def output(self, row: ServedRow, token: int, reason: str | None) -> StepOutput:
        if reason == "stop":
            out = StepOutput(row.stream.flush(), row.count, "stop")
        else:
            text = row.stream.push(token)
            if row.stream.stopped:  # a stop string
                row.finished = True
                out = StepOutput(text, row.count, "stop")
            elif reason == "length":
                out = StepOutput(text + row.stream.flush(), row.count, "length")
            else:
                out = StepOutput(text, row.count)
        if (
            row.top_logprobs is not None
            and (out.text or out.finish_reason)
            and row.logprobs_sent < len(row.logprobs)
        ):
            out.logprobs = row.logprobs[row.logprobs_sent :]
            row.logprobs_sent = len(row.logprobs)
        return out
