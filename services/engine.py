"""Batched, step-wise decoding: one prefill for a batch of prompts, then one forward per token for all of them.

`Engine.generate` is a plain generator that yields after every decoding step, so the caller can stream each
request's new text while the batch continues. Requests in a batch keep their own sampling settings, stop
strings and token budgets; a finished request stops producing output (its row idles until the batch ends:
this is static batching per dynamic batch, not continuous batching).

Greedy decoding here matches `mm1.model.loading.generate_answers` (eval's decoder) token for token: the same
prompt encoding (MM1Processor.encode_chat), the same stop tokens and the same suppressed image placeholder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

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

    def _prefill_inputs(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor | None]:
        length = max(len(p.input_ids) for p in prompts)
        ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, length - len(prompt.input_ids) :] = torch.tensor(prompt.input_ids)
            mask[row, length - len(prompt.input_ids) :] = 1
        # Left padding: positions count real tokens only (pads sit at 0 and are masked out).
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        pixels = [p.pixel_values for p in prompts if p.pixel_values is not None]
        pixel_values = torch.cat(pixels).to(self.device, self.model.dtype) if pixels else None
        return {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "pixel_values": pixel_values,
        }

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Prompt]) -> Iterator[list[StepOutput | None]]:
        """Yield, after each step, one entry per prompt: its StepOutput, or None once it finished earlier."""
        inputs = self._prefill_inputs(prompts)
        mask, positions = inputs["attention_mask"], inputs["position_ids"]
        out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        cache = out.cache
        logits = out.logits[:, -1, :]

        streams = [TextStream(self.decode, p.params.stop) for p in prompts]
        generators = [make_generator(p.params.seed, self.device) for p in prompts]
        budgets = [min(p.params.max_tokens, self.context_length - len(p.input_ids)) for p in prompts]
        counts = [0] * len(prompts)
        finished = [False] * len(prompts)
        while True:
            logits[:, self.suppressed] = float("-inf")
            greedy = logits.argmax(dim=-1).tolist()
            step: list[StepOutput | None] = []
            next_ids: list[int] = []
            for row, prompt in enumerate(prompts):
                if finished[row]:
                    step.append(None)
                    next_ids.append(self.pad_id)
                    continue
                params = prompt.params
                token = (
                    greedy[row]
                    if params.temperature == 0
                    else sample_next(logits[row], params, generators[row])
                )
                counts[row] += 1
                next_ids.append(token)
                output = self._advance(streams[row], token, params, counts[row] >= budgets[row])
                output.completion_tokens = counts[row]
                finished[row] = output.finish_reason is not None
                step.append(output)
            yield step
            if all(finished):
                return
            mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=-1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=torch.tensor(next_ids, device=self.device).unsqueeze(-1),
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            logits = out.logits[:, -1, :]

    def _advance(
        self, stream: TextStream, token: int, params: SamplingParams, out_of_budget: bool
    ) -> StepOutput:
        if token in self.stop_ids and not params.ignore_eos:
            return StepOutput(stream.flush(), 0, "stop")
        text = stream.push(token)
        if stream.stopped:
            return StepOutput(text, 0, "stop")
        if out_of_budget:
            return StepOutput(text + stream.flush(), 0, "length")
        return StepOutput(text, 0)
