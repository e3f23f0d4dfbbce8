"""The train-serve parity gate: before the deploy step reports an endpoint healthy, the endpoint's greedy
answers to fixed image questions must be the training-side model's own, token for token and logprob for
logprob.

Fixed prompts (three Shapes scenes drawn from fixed seeds, one question type each) go through the public
endpoint with `logprobs=True, temperature=0`. In this process the same checkpoint is loaded with
`load_for_inference` (the loader of eval and training's resume), the same request is turned into model input by
serving's own `services.prompts.build_prompt` (the shared chat template and image preprocessing, here with this
process's processor), and one teacher-forced forward pass over prompt + the endpoint's answer gives, at every
answer position, the model's raw log-softmax and its greedy choice (the image placeholder suppressed, as the
decoder does). The gate fails (`ParityError`) when
  - an answer token is not the forward's greedy token (a near tie, within the tolerance, is not a failure),
  - an answer token's logprob differs from the forward's by more than the tolerance of the dtype (TOLERANCES),
  - the answer stopped where the forward's greedy token is no stop token.
What it catches: a replica that preprocesses, templates, batches, caches or loads differently from the
training-side forward (e.g. a processor config the replica reads that the model was not trained with).
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Largest |endpoint logprob - forward logprob| accepted, by the dtype the comparison is at (the coarser of the
# replica's and this process's). fp32: the two sides differ only by summation order (batched, KV-cached
# decode vs one full forward), ~1e-5 on the tiny model; half precisions keep ~3 (bf16) or ~4 (fp16)
# significant digits of logits in the tens.
TOLERANCES: dict[str, float] = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}
PRECISION_ORDER = ("float32", "float16", "bfloat16")  # finer to coarser
MAX_TOKENS = 8  # answer tokens compared per prompt
# (scene seed, question type): types that every scene has (mm1.data.shapes.questions).
FIXED_PROMPTS: tuple[tuple[int, str], ...] = ((1001, "count_all"), (1002, "exists"), (1003, "caption"))

Log = Callable[[str], None]


class ParityError(RuntimeError):
    """The served model does not answer as the training-side forward does.

    Not a UserFacingError: no setting of the workflow is wrong as such; either the serving path has a bug or
    something skewed one side (a processor config, a template, a dtype) in a way the platform should have
    made impossible. It keeps its traceback and is reported as a failure of the platform."""


@dataclass(frozen=True)
class ParityPrompt:
    name: str  # "<question type>@<scene seed>"
    question: str
    image_png: bytes

    def body(self, model: str, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
        """The chat completion request, as sent (and, on this side, as parsed by serving's own protocol)."""
        url = "data:image/png;base64," + base64.b64encode(self.image_png).decode("ascii")
        return {
            "model": model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": self.question},
                    ],
                }
            ],
            "temperature": 0,
            "max_tokens": max_tokens,
            "logprobs": True,
        }


def fixed_prompts() -> list[ParityPrompt]:
    """The gate's prompts: the same scenes and questions for every deploy."""
    import numpy as np

    from mm1.data.shapes import questions, render, sample_scene

    prompts = []
    for seed, kind in FIXED_PROMPTS:
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng)
        question = next(q for q in questions(scene, rng) if q.type == kind)
        buffer = io.BytesIO()
        render(scene).save(buffer, format="PNG")
        prompts.append(ParityPrompt(f"{kind}@{seed}", question.question, buffer.getvalue()))
    return prompts


@dataclass
class ServedAnswer:
    """One endpoint answer: its tokens' bytes and logprobs, and why it ended."""

    token_bytes: list[bytes]
    logprobs: list[float]
    finish_reason: str


def ask_endpoint(url: str, api_key: str | None, bodies: Sequence[dict[str, Any]]) -> list[ServedAnswer]:
    """Send each request through the real `openai` client (one at a time: the answers must not depend on it)."""
    from openai import OpenAI

    from services.client import NO_KEY

    client = OpenAI(base_url=url, api_key=api_key or NO_KEY, timeout=120, max_retries=0)
    answers = []
    for body in bodies:
        choice = client.chat.completions.create(**body).choices[0]
        content = choice.logprobs.content if choice.logprobs is not None else None
        if content is None:
            raise ParityError(f"the endpoint at {url} returned no logprobs for a request with logprobs=true")
        answers.append(
            ServedAnswer(
                [bytes(item.bytes or []) for item in content],
                [float(item.logprob) for item in content],
                choice.finish_reason,
            )
        )
    return answers


def comparison_dtype(served: str, reference: str) -> str:
    """The coarser of the two sides' dtypes: the one whose tolerance applies."""
    return max(served, reference, key=PRECISION_ORDER.index)


class Reference:
    """The training-side model of a checkpoint in this process, and its teacher-forced forward."""

    def __init__(self, checkpoint: str, settings: Any, device: str = "cpu"):
        from mm1.model import load_for_inference
        from mm1.model.decoding import Decoder
        from services import grammar
        from services.images import ImagePolicy
        from services.prompts import Limits

        self.model, self.processor = load_for_inference(checkpoint, device=device)
        self.decoder = Decoder(self.model, self.processor)
        self.vocabulary = grammar.vocabulary(self.processor)
        self.policy = ImagePolicy.from_settings(settings)
        self.limits = Limits(settings.max_images, self.decoder.context_length, settings.default_max_tokens)
        self._ids_by_bytes: dict[bytes, list[int]] | None = None

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    def token_ids(self, raw: bytes) -> list[int]:
        """The ids whose bytes (as the endpoint reports them) are `raw`."""
        if self._ids_by_bytes is None:
            index: dict[bytes, list[int]] = {}
            for token in range(self.vocabulary.tokenizer.vocab_size):
                index.setdefault(self.vocabulary.token_bytes(token), []).append(token)
            self._ids_by_bytes = index
        return self._ids_by_bytes.get(raw, [])

    def token_text(self, token: int) -> str:
        raw = self.vocabulary.token_bytes(token)
        try:
            return repr(raw.decode("utf-8"))
        except UnicodeDecodeError:  # a piece of a multi-byte character
            return repr(raw)

    def prompt(self, body: dict[str, Any]) -> Any:
        """The request as model input, through serving's own prompt builder."""
        from services.prompts import build_prompt
        from services.protocol import ChatCompletionRequest

        request = ChatCompletionRequest.model_validate(body)
        return asyncio.run(build_prompt(request, self.processor, self.policy, self.limits))

    def forward(self, prompt: Any, answer: list[int]) -> tuple[Any, list[int]]:
        """Teacher-forced: the raw log-softmax [len(answer) + 1, vocab] at each answer position (and the one
        after it), and the greedy token there (suppressed tokens masked, as the decoder chooses)."""
        import torch

        from mm1.model.decoding import suppress

        ids = torch.tensor([list(prompt.input_ids) + answer], device=self.model.device)
        pixels = prompt.pixel_values
        with torch.inference_mode():
            logits = self.model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values=None if pixels is None else pixels.to(self.model.device, self.model.dtype),
            ).logits[0, len(prompt.input_ids) - 1 :]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        row = self.decoder.chat_row(len(answer) + 1)
        masked = logits.clone()
        suppress(masked, [row] * len(masked))
        return logprobs, masked.argmax(dim=-1).tolist()


def _check_answer(
    prompt: ParityPrompt, served: ServedAnswer, reference: Reference, tolerance: float, dtype: str
) -> tuple[int, float]:
    """Compare one answer; (tokens compared, largest |logprob difference|), or ParityError."""
    candidates = [reference.token_ids(raw) for raw in served.token_bytes]
    for i, found in enumerate(candidates):
        if not found:
            raise ParityError(
                f"train-serve parity: prompt {prompt.name!r} ({prompt.question!r}), answer position {i}: the "
                f"endpoint returned a token with bytes {served.token_bytes[i]!r}, which is no token of the "
                "checkpoint's tokenizer"
            )
    model_input = reference.prompt(prompt.body("parity"))
    # Tokens with the same bytes (rare) take the forward's greedy choice; each change moves later positions.
    answer = [found[0] for found in candidates]
    for _ in range(len(answer) + 1):
        logprobs, greedy = reference.forward(model_input, answer)
        fixed = [
            greedy[i] if len(found) > 1 and greedy[i] in found else answer[i]
            for i, found in enumerate(candidates)
        ]
        if fixed == answer:
            break
        answer = fixed

    def where(i: int) -> str:
        return f"train-serve parity: prompt {prompt.name!r} ({prompt.question!r}), answer position {i}"

    largest = 0.0
    for i, (token, got) in enumerate(zip(answer, served.logprobs, strict=True)):
        expected = float(logprobs[i, token])
        diff = abs(expected - got)
        largest = max(largest, diff)
        best = greedy[i]
        gap = float(logprobs[i, best]) - expected
        if token != best and gap > tolerance:
            raise ParityError(
                f"{where(i)}: the endpoint's greedy token is {reference.token_text(token)} (id {token}) but the "
                f"training-side forward's is {reference.token_text(best)} (id {best}); the forward puts the "
                f"endpoint's token {gap:.4g} below its own (logprob {expected:.4f} there, the endpoint says "
                f"{got:.4f}: |difference| {diff:.3g}; tolerance {tolerance:g} at {dtype})"
            )
        if diff > tolerance:
            raise ParityError(
                f"{where(i)}: token {reference.token_text(token)} (id {token}) has logprob {got:.6f} at the "
                f"endpoint but {expected:.6f} in the training-side forward: |difference| {diff:.3g} exceeds the "
                f"tolerance {tolerance:g} at {dtype}"
            )
    end = len(answer)
    if served.finish_reason == "stop" and greedy[end] not in reference.decoder.chat_stop_ids:
        stop_lp = max(float(logprobs[end, s]) for s in reference.decoder.chat_stop_ids)
        if float(logprobs[end, greedy[end]]) - stop_lp > tolerance:
            raise ParityError(
                f"{where(end)}: the endpoint ended its answer there, but the training-side forward's greedy token "
                f"is {reference.token_text(greedy[end])} (id {greedy[end]}), not a stop token "
                f"(tolerance {tolerance:g} at {dtype})"
            )
    return len(answer), largest


def check_parity(
    url: str,
    model: str,
    checkpoint: str,
    settings: Any,
    api_key: str | None = None,
    log: Log = print,
    reference: Reference | None = None,
) -> dict[str, Any]:
    """Run the gate against the endpoint at `url` (…/v1) serving `checkpoint` with `settings`
    (services.settings.ServeSettings); return the figures for the deploy manifest, or raise ParityError."""
    started = time.monotonic()
    reference = reference or Reference(checkpoint, settings)
    served_dtype = "bfloat16" if settings.torch_device.startswith("cuda") else "float32"  # loading's default
    dtype = comparison_dtype(served_dtype, reference.dtype)
    tolerance = TOLERANCES[dtype]
    prompts = fixed_prompts()
    answers = ask_endpoint(url, api_key, [p.body(model) for p in prompts])
    tokens, largest = 0, 0.0
    for prompt, served in zip(prompts, answers, strict=True):
        compared, diff = _check_answer(prompt, served, reference, tolerance, dtype)
        tokens += compared
        largest = max(largest, diff)
    figures = {
        "prompts": len(prompts),
        "tokens": tokens,
        "max_abs_logprob_diff": largest,
        "tolerance": tolerance,
        "dtype": dtype,
        "seconds": round(time.monotonic() - started, 3),
    }
    log(
        f"[deploy] parity gate passed: {tokens} answer tokens of {len(prompts)} image prompts equal the "
        f"training-side forward's greedy tokens; largest |logprob difference| {largest:.3g} "
        f"(tolerance {tolerance:g} at {dtype}, {figures['seconds']:.1f} s)"
    )
    return figures
