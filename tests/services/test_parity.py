"""The train-serve parity gate's comparison, without Serve: the serving engine's greedy answers (with
logprobs) against the training-side teacher-forced forward of the same checkpoint."""

from __future__ import annotations

import dataclasses

import pytest

from services.parity import (
    TOLERANCES,
    ParityError,
    Reference,
    ServedAnswer,
    _check_answer,
    comparison_dtype,
    fixed_prompts,
)
from services.settings import ServeSettings


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return Reference(tiny_checkpoint, ServeSettings(checkpoint=tiny_checkpoint))


def engine_answers(reference, prompts, max_tokens=8):
    """What the endpoint's engine answers greedily, with logprobs, as the endpoint reports it (bytes)."""
    from services.engine import Engine

    engine = Engine(reference.model, reference.processor)
    inputs = []
    for p in prompts:
        prompt = reference.prompt(p.body("m", max_tokens))
        inputs.append(dataclasses.replace(prompt, params=dataclasses.replace(prompt.params, logprobs=0)))
    entries = [[] for _ in prompts]
    reasons = [None] * len(prompts)
    for outputs in engine.generate(inputs):
        for i, out in enumerate(outputs):
            if out is not None:
                entries[i] += out.logprobs
                reasons[i] = out.finish_reason or reasons[i]
    return [
        ServedAnswer(
            [reference.vocabulary.token_bytes(e.token) for e in row], [e.logprob for e in row], reason
        )
        for row, reason in zip(entries, reasons, strict=True)
    ]


def test_fixed_prompts_are_fixed_and_of_different_types():
    first, again = fixed_prompts(), fixed_prompts()
    assert [p.name for p in first] == ["count_all@1001", "exists@1002", "caption@1003"]
    assert first == again  # same scenes, same pixels, same questions on every deploy
    assert first[0].body("m")["logprobs"] is True and first[0].body("m")["temperature"] == 0


def test_comparison_dtype_is_the_coarser_side():
    assert comparison_dtype("float32", "float32") == "float32"
    assert comparison_dtype("bfloat16", "float32") == "bfloat16"
    assert TOLERANCES["float32"] < TOLERANCES["float16"] < TOLERANCES["bfloat16"]


def test_the_engine_matches_the_teacher_forced_forward(reference):
    prompts = fixed_prompts()
    for prompt, served in zip(prompts, engine_answers(reference, prompts), strict=True):
        compared, largest = _check_answer(prompt, served, reference, 1e-3, "float32")
        assert compared == len(served.logprobs)
        assert largest < 1e-4


def test_a_wrong_logprob_names_prompt_position_and_difference(reference):
    prompt = fixed_prompts()[0]
    served = engine_answers(reference, [prompt])[0]
    assert served.logprobs, "the tiny model answered nothing: pick another prompt"
    served.logprobs[0] -= 0.01
    with pytest.raises(
        ParityError, match=r"prompt 'count_all@1001'.*position 0.*\|difference\| 0\.01 exceeds"
    ):
        _check_answer(prompt, served, reference, 1e-3, "float32")


def test_a_token_that_is_not_the_forward_argmax_fails(reference):
    prompt = fixed_prompts()[1]
    served = engine_answers(reference, [prompt])[0]
    assert served.token_bytes
    # Another token at position 0, with the logprob the forward gives it: only the greedy check can fail.
    logprobs, greedy = reference.forward(reference.prompt(prompt.body("m")), [])
    other = int(logprobs[0].argsort(descending=True)[1])
    served.token_bytes[0] = reference.vocabulary.token_bytes(other)
    served.logprobs[0] = float(logprobs[0, other])
    with pytest.raises(
        ParityError, match=r"exists@1002.*position 0.*greedy token is .* but the training-side"
    ):
        _check_answer(prompt, served, reference, 1e-3, "float32")
