"""The batched step-wise decoder, in-process: it must decode like eval and keep requests independent."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import image_bytes

from mm1.data.preprocess import load_image
from mm1.model import generate_answers, load_for_inference
from services.engine import Engine, Prompt, StepOutput
from services.openai_app import drain_in_thread, merge_steps, visible_steps
from services.sampling import SamplingParams

TURNS_IMAGE = [{"role": "user", "content": "<image>\nhow many shapes are there?"}]
TURNS_TEXT = [{"role": "user", "content": "what color is the triangle? tell me in a few words please"}]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    model, processor = load_for_inference(tiny_checkpoint)
    return model, processor, Engine(model, processor)


def prompt(processor, turns, images, **params) -> Prompt:
    encoded = processor.encode_chat(turns, images)
    return Prompt(encoded["input_ids"][0].tolist(), encoded["pixel_values"], SamplingParams(**params))


def run(engine: Engine, prompts: list[Prompt]) -> list[tuple[str, int, str]]:
    texts = [""] * len(prompts)
    last: list[StepOutput | None] = [None] * len(prompts)
    for step in engine.generate(prompts):
        for row, out in enumerate(step):
            if out is not None:
                assert last[row] is None or last[row].finish_reason is None, "output after finishing"
                texts[row] += out.text
                last[row] = out
    return [(texts[i], last[i].completion_tokens, last[i].finish_reason) for i in range(len(prompts))]


def test_greedy_batch_matches_eval_decoding(loaded):
    """Left-padded batch of two prompts of different lengths == generate_answers (eval's decoder) on each."""
    model, processor, engine = loaded
    image = load_image(image_bytes())
    prompts = [
        prompt(processor, TURNS_IMAGE, [image], max_tokens=20, temperature=0),
        prompt(processor, TURNS_TEXT, [], max_tokens=20, temperature=0),
    ]
    assert len(prompts[0].input_ids) != len(prompts[1].input_ids)
    served = run(engine, prompts)
    expected = generate_answers(
        model, processor, [(TURNS_IMAGE, [image]), (TURNS_TEXT, [])], max_new_tokens=20
    )
    assert [text.strip() for text, _, _ in served] == expected


def test_seeded_sampling_does_not_depend_on_batch_peers(loaded):
    _, processor, engine = loaded
    seeded = prompt(processor, TURNS_TEXT, [], max_tokens=16, temperature=1.0, seed=7, ignore_eos=True)
    other = prompt(
        processor, TURNS_IMAGE, [load_image(image_bytes())], max_tokens=5, temperature=1.0, seed=99
    )
    alone = run(engine, [seeded])[0]
    batched = run(engine, [other, seeded])[1]
    assert alone == batched
    reseeded = prompt(processor, TURNS_TEXT, [], max_tokens=16, temperature=1.0, seed=8, ignore_eos=True)
    assert run(engine, [reseeded])[0][0] != alone[0]


def test_budget_and_finish_reasons(loaded):
    _, processor, engine = loaded
    fixed = prompt(processor, TURNS_TEXT, [], max_tokens=9, temperature=0, ignore_eos=True)
    short = prompt(processor, TURNS_TEXT, [], max_tokens=3, temperature=0, ignore_eos=True)
    (_, n_fixed, why_fixed), (_, n_short, why_short) = run(engine, [fixed, short])
    assert (n_fixed, why_fixed) == (9, "length")
    assert (n_short, why_short) == (3, "length")


def test_merge_steps_concatenates_and_keeps_the_last_state():
    steps = [
        [StepOutput("a", 1), StepOutput("x", 1, "stop")],
        [StepOutput("b", 2), None],
        [StepOutput("c", 3, "length"), None],
    ]
    merged = merge_steps(steps, 2)
    assert merged[0] == StepOutput("abc", 3, "length")
    assert merged[1] == StepOutput("x", 1, "stop")
    assert merge_steps([[None, StepOutput("y", 2)]], 2) == [None, StepOutput("y", 2)]


def test_only_steps_a_client_can_see_are_passed_on():
    steps = [
        [StepOutput("", 1), StepOutput("", 1)],  # first token: always (it times TTFT)
        [StepOutput("", 2), StepOutput("", 2)],  # held-back text: nothing to send
        [StepOutput("a", 3), StepOutput("", 3)],
        [StepOutput("", 4), StepOutput("", 4, "length")],
        [StepOutput("", 5), None],
        [StepOutput("", 6, "stop"), None],
    ]
    assert list(visible_steps(iter(steps))) == [steps[0], steps[2], steps[3], steps[5]]


def test_drain_in_thread_delivers_everything_then_reraises_failures():
    def items():
        yield from range(5)

    def broken():
        yield 1
        raise RuntimeError("model exploded")

    async def collect(make):
        with ThreadPoolExecutor(1) as pool:
            return [x async for batch in drain_in_thread(make, pool) for x in batch]

    assert asyncio.run(collect(items)) == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="model exploded"):
        asyncio.run(collect(broken))
