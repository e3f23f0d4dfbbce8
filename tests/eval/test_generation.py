"""generate_from_ids: chat answers as generate_answers gives them, stops from the prompt (the image token ends a
document prompt, and is suppressed otherwise), images encoded once per batch, batches of one kind."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from eval_helpers import tiny_model

from mm1.data import chat, shapes
from mm1.data.chat import IMAGE
from mm1.eval.answerer import Task, make_batches
from mm1.eval.generation import IdsPrompt, generate_from_ids
from mm1.eval.kshot import Demo, build_kshot_prompt
from mm1.model import generate_answers

QUESTIONS = [
    "how many shapes are there?",
    "what color is the circle?",
    "is there a red square?",
    "what word is written?",
    "describe the image.",
]


@pytest.fixture(scope="module")
def model_and_processor():
    torch.set_num_threads(1)
    return tiny_model()


def _scene_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    shapes.render(shapes.sample_scene(np.random.default_rng(seed))).save(buffer, format="PNG")
    return buffer.getvalue()


def _chat_prompt(processor, question: str, image: bytes, key, max_new_tokens: int = 8) -> IdsPrompt:
    turns = [{"role": "user", "content": f"{IMAGE}\n{question}"}]
    ids = chat.encode_prompt(processor.tokenizer, turns, processor.image_tokens_per_image).input_ids
    pixels = processor.images_to_pixel_values([image])
    return IdsPrompt(ids, pixels, tuple(processor.stop_token_ids()), max_new_tokens, (key,))


def _document_prompt(processor, k: int = 2) -> IdsPrompt:
    pool = [Demo(f"d{i}", _scene_png(100 + i), f"a red circle and {i} squares") for i in range(4)]
    query = Demo("q", _scene_png(7), "")
    prompt = build_kshot_prompt(
        processor.tokenizer, query, pool, k, seed=3, image_tokens=processor.image_tokens_per_image
    )
    pixels = processor.images_to_pixel_values(prompt.images)
    keys = tuple(d.key for d in prompt.demos) + ("q",)
    return IdsPrompt(prompt.input_ids, pixels, tuple(prompt.stop_token_ids), 6, keys)


def test_chat_prompts_get_the_answers_generate_answers_gives(model_and_processor):
    model, processor = model_and_processor
    images = [_scene_png(i % 3) for i in range(len(QUESTIONS))]  # scenes repeat, as in a VQA batch
    prompts = [
        _chat_prompt(processor, q, image, i % 3)
        for i, (q, image) in enumerate(zip(QUESTIONS, images, strict=True))
    ]
    ours = generate_from_ids(model, processor, prompts, batch_size=3)
    chats = [
        ([{"role": "user", "content": f"{IMAGE}\n{q}"}], [im])
        for q, im in zip(QUESTIONS, images, strict=True)
    ]
    reference = generate_answers(model, processor, chats, max_new_tokens=8, batch_size=8)
    assert ours == reference
    assert len(set(ours)) > 2  # varied answers: the equality is not between constants


def _force_token_at(model, token_id: int, call: int):
    """From the `call`-th lm_head call on (1 = prefill, which yields the first new token), `token_id` wins."""
    calls = []

    def hook(module, args, logits):
        calls.append(1)
        if len(calls) >= call:
            logits[..., token_id] = 1e4
        return logits

    return model.language_model.lm_head.register_forward_hook(hook)


def test_the_image_token_ends_a_document_prompt(model_and_processor):
    model, processor = model_and_processor
    prompt = _document_prompt(processor)
    image_id = model.config.image_token_id
    assert image_id in prompt.stop_ids
    first_two = generate_from_ids(model, processor, [replace(prompt, max_new_tokens=2)])[0]
    unforced = generate_from_ids(model, processor, [prompt])[0]
    assert first_two and unforced != first_two  # the model would go on without the forced stop
    handle = _force_token_at(model, image_id, call=3)
    try:
        stopped = generate_from_ids(model, processor, [prompt])[0]
    finally:
        handle.remove()
    assert stopped == first_two


def test_the_image_token_is_suppressed_where_it_is_not_a_stop(model_and_processor):
    model, processor = model_and_processor
    image_id = model.config.image_token_id
    prompt = _chat_prompt(processor, "what word is written?", _scene_png(1), "a")
    assert image_id not in prompt.stop_ids
    handle = _force_token_at(model, image_id, call=1)
    try:
        answer = generate_from_ids(model, processor, [prompt])[0]
    finally:
        handle.remove()
    assert answer  # the forced placeholder never came out, so generation went on with text


def test_each_distinct_image_is_encoded_once_per_batch(model_and_processor):
    model, processor = model_and_processor
    image = _scene_png(5)
    shared = [_chat_prompt(processor, q, image, "scene-5") for q in QUESTIONS]
    distinct = [replace(p, image_keys=(i,)) for i, p in enumerate(shared)]
    encoded: list[int] = []
    handle = model.vision_tower.register_forward_hook(lambda m, args, out: encoded.append(args[0].shape[0]))
    try:
        once = generate_from_ids(model, processor, shared, batch_size=8)
        assert encoded == [1]
        every = generate_from_ids(model, processor, distinct, batch_size=8)
        assert encoded == [1, len(QUESTIONS)]
    finally:
        handle.remove()
    assert once == every


def test_prompts_must_name_one_key_per_image(model_and_processor):
    model, processor = model_and_processor
    prompt = _chat_prompt(processor, "how many shapes are there?", _scene_png(0), "a")
    with pytest.raises(ValueError, match="image keys"):
        generate_from_ids(model, processor, [replace(prompt, image_keys=())])


def test_batches_hold_one_prompt_kind_and_every_task_once():
    images = [_scene_png(i) for i in range(3)]
    tasks = [Task(f"q{i}", images[i % 3], f"question {i}", max_new_tokens=8) for i in range(7)]
    tasks += [Task(f"c{i}", images[i], "describe the image.", max_new_tokens=24) for i in range(3)]
    tasks += [Task(f"k{k}-{i}", images[i], shots=k, query=f"s{i}") for k in (0, 4) for i in range(3)]
    batches = make_batches(tasks, batch_size=3)
    assert sorted(t.key for b in batches for t in b) == sorted(t.key for t in tasks)
    for batch in batches:
        assert 1 <= len(batch) <= 3
        assert len({(t.shots, t.max_new_tokens) for t in batch}) == 1
    questions = [t for b in batches for t in b if t.key.startswith("q")]
    runs = sum(1 for a, b in zip(questions, questions[1:], strict=False) if a.image != b.image) + 1
    assert runs == 3  # questions about one image are adjacent
    assert make_batches(tasks, batch_size=3) == batches  # a pure function of the tasks
