"""The step-wise decoder, in-process: it must decode like eval and keep requests independent."""

from __future__ import annotations

import pytest
from conftest import image_bytes
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from mm1.data.preprocess import load_image
from mm1.model import generate_answers, load_for_inference
from services.engine import Engine, Prompt, StepOutput
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


def test_merging_and_dropping_rows_keeps_every_answer(loaded):
    """A row that joins a running batch (longer prompt, extra padding) and rows that leave early do not
    change anyone's greedy answer."""
    model, processor, engine = loaded
    image = load_image(image_bytes())
    long = prompt(processor, TURNS_IMAGE, [image], max_tokens=12, temperature=0, ignore_eos=True)
    short = prompt(processor, TURNS_TEXT, [], max_tokens=4, temperature=0, ignore_eos=True)
    solo = {name: run(engine, [p])[0][0] for name, p in (("long", long), ("short", short))}

    batch, first = engine.prefill([short])
    name_of = {id(batch.rows[0]): "short"}
    texts = {"short": first[0].text, "long": ""}
    step = 0
    while batch.live:
        step += 1
        if step == 2:  # the long prompt joins mid-way
            group, outputs = engine.prefill([long])
            texts["long"] += outputs[0].text
            name_of[id(group.rows[0])] = "long"
            batch = batch.merge(group)
        for row, out in zip(batch.rows, engine.step(batch), strict=True):
            if out is not None:
                texts[name_of[id(row)]] += out.text
        batch.drop_finished()
    assert batch.merged == [1]
    assert step == 12  # long joins at step 2: 1 token from its prefill, 11 from steps 2..12
    assert texts == solo


def test_a_finished_row_leaves_at_once_and_only_the_last_row_moves_into_its_slot(loaded):
    _, processor, engine = loaded
    prompts = [prompt(processor, TURNS_TEXT, [], max_tokens=1, temperature=0, ignore_eos=True)] + [
        prompt(processor, TURNS_IMAGE, [load_image(image_bytes(seed=seed))], max_tokens=6, temperature=0)
        for seed in range(4)
    ]
    solo = [run(engine, [p])[0][0] for p in prompts[1:]]
    batch, first = engine.prefill(prompts)
    rows = list(batch.rows)
    texts = {id(row): out.text for row, out in zip(rows, first, strict=True)}
    buffers = [layer._key_buffer.untyped_storage().data_ptr() for layer in batch.cache.layers]
    assert first[0].finish_reason == "length"
    batch.drop_finished()
    # The last row took the finished row's slot; the cache's buffers are the same (no copy of the others).
    assert [id(row) for row in batch.rows] == [id(rows[i]) for i in (4, 1, 2, 3)]
    assert [layer._key_buffer.untyped_storage().data_ptr() for layer in batch.cache.layers] == buffers
    assert batch.mask.shape[0] == 4 and all(layer.keys.shape[0] == 4 for layer in batch.cache.layers)
    while batch.live:
        for row, out in zip(batch.rows, engine.step(batch), strict=True):
            if out is not None:
                texts[id(row)] += out.text
        batch.drop_finished()
    assert [texts[id(row)] for row in rows[1:]] == solo and len(set(solo)) > 1


def test_when_the_longest_row_leaves_the_columns_only_it_used_are_dropped_without_a_copy(loaded):
    """Attention stops reading the leading columns that became padding in every row, and no answer changes."""
    _, processor, engine = loaded
    long = prompt(processor, TURNS_TEXT, [], max_tokens=2, temperature=0, ignore_eos=True)
    short = [
        prompt(
            processor,
            TURNS_IMAGE,
            [load_image(image_bytes(seed=n))],
            max_tokens=n,
            temperature=0,
            ignore_eos=True,
        )
        for n in (7, 8)
    ]
    shortest = len(short[0].input_ids)
    assert len(long.input_ids) > shortest + 5, "the test needs a much longer first prompt"
    solo = [run(engine, [p])[0][0] for p in [long, *short]]
    batch, first = engine.prefill([long, *short])
    rows = list(batch.rows)
    texts = {id(row): out.text for row, out in zip(rows, first, strict=True)}
    buffers = [layer._key_buffer.untyped_storage().data_ptr() for layer in batch.cache.layers]
    lengths = []
    while batch.live:
        for row, out in zip(batch.rows, engine.step(batch), strict=True):
            if out is not None:
                texts[id(row)] += out.text
        batch.drop_finished()
        lengths.append(batch.mask.shape[1])
        assert all(layer.keys.shape[-2] == batch.mask.shape[1] for layer in batch.cache.layers)
    # After step 1 the long row (2 tokens) is gone: the cache holds the short rows' prompt and the token each
    # was fed, not the long row's prompt.
    assert lengths[:3] == [shortest + 1, shortest + 2, shortest + 3]
    assert [layer._key_buffer.untyped_storage().data_ptr() for layer in batch.cache.layers] == buffers
    assert [texts[id(row)] for row in rows] == solo


def test_a_cache_that_cannot_drop_rows_in_place_lets_a_few_ride_along(loaded):
    """A cache of plain DynamicLayers (a model whose own cache the decoder does not convert): removing
    rows copies the whole cache, so a finished row rides along until a quarter of the batch has finished."""
    _, processor, engine = loaded
    prompts = [
        prompt(processor, TURNS_TEXT, [], max_tokens=n, temperature=0, ignore_eos=True)
        for n in (1, 6, 6, 6, 6)
    ]
    batch, _ = engine.prefill(prompts)
    plain = DynamicCache()
    for layer in batch.cache.layers:
        copy = DynamicLayer()
        copy.update(layer.keys.clone(), layer.values.clone())
        plain.layers.append(copy)
    batch.cache = plain
    batch.drop_finished()
    assert len(batch.rows) == 5 and batch.live == 4  # 1 of 5 finished: not worth a cache copy yet
    outputs = engine.step(batch)
    assert outputs[0] is None and all(o is not None for o in outputs[1:])
    batch.compact()
    assert len(batch.rows) == 4 and batch.mask.shape[0] == 4
    assert all(layer.keys.shape[0] == 4 for layer in batch.cache.layers)
