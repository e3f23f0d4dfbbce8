"""Structured output and log-probabilities in the engine, in-process: a JSON schema's grammar masks each
constrained row at every step, so even the tiny random model answers with JSON that matches the schema."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest
import torch
from conftest import image_bytes

from mm1.data.preprocess import load_image
from mm1.model import load_for_inference
from mm1.model.decoding import Row, constrain
from services import grammar
from services.engine import Engine, Prompt
from services.sampling import SamplingParams, choice_seed

SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "color": {"enum": ["red", "green", "blue"]},
        "shapes": {"type": "array", "items": {"enum": ["circle", "square"]}, "maxItems": 2},
    },
    "required": ["count", "color", "shapes"],
    "additionalProperties": False,
}
TURNS = [{"role": "user", "content": "how many shapes are there?"}]
TURNS_IMAGE = [{"role": "user", "content": "<image>\nwhat color is the triangle?"}]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    model, processor = load_for_inference(tiny_checkpoint)
    return processor, Engine(model, processor)


def prompt(processor, constraint=None, turns=TURNS, images=(), **params) -> Prompt:
    encoded = processor.encode_chat(turns, list(images))
    return Prompt(
        encoded["input_ids"][0].tolist(), encoded["pixel_values"], SamplingParams(**params), constraint
    )


def run(engine: Engine, prompts: list[Prompt]) -> list[tuple[str, int, str, list]]:
    texts, last, entries = [""] * len(prompts), [None] * len(prompts), [[] for _ in prompts]
    for step in engine.generate(prompts):
        for i, out in enumerate(step):
            if out is not None:
                texts[i] += out.text
                entries[i] += out.logprobs
                last[i] = out
    return [
        (texts[i], last[i].completion_tokens, last[i].finish_reason, entries[i]) for i in range(len(prompts))
    ]


def test_constrained_answers_parse_and_match_the_schema_batched_with_free_rows(loaded):
    processor, engine = loaded
    compiled = grammar.compile_schema(processor, SCHEMA)
    image = load_image(image_bytes())
    free = prompt(processor, turns=TURNS_IMAGE, images=[image], max_tokens=12, temperature=0)
    (alone,) = run(engine, [free])
    constrained = [
        prompt(processor, compiled.fresh(), max_tokens=80, temperature=0),
        *(prompt(processor, compiled.fresh(), max_tokens=80, temperature=1.0, seed=s) for s in range(4)),
    ]
    results = run(engine, [free, *constrained])
    assert results[0] == alone  # a free row in the batch decodes as without the grammars beside it
    answers = set()
    for text, _, finish, _ in results[1:]:
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)
        answers.add(text)
    assert len(answers) > 1  # sampling still chooses among what the schema allows


def test_json_object_is_an_object_or_ends_for_length(loaded):
    processor, engine = loaded
    compiled = grammar.compile_schema(processor, grammar.schema_for(_Format("json_object")))
    for seed in range(3):
        ((text, tokens, finish, _),) = run(
            engine, [prompt(processor, compiled.fresh(), max_tokens=40, temperature=1.0, seed=seed)]
        )
        assert text.startswith("{")
        if finish == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert finish == "length" and tokens == 40


def test_a_budget_spent_before_the_json_ends_is_length_with_the_json_cut(loaded):
    processor, engine = loaded
    compiled = grammar.compile_schema(processor, SCHEMA)
    ((text, tokens, finish, _),) = run(engine, [prompt(processor, compiled, max_tokens=4, temperature=0)])
    assert (tokens, finish) == (4, "length")
    assert text.startswith('{"') and text != "{}"
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_schemas_llguidance_cannot_build_are_refused(loaded):
    processor, _ = loaded
    with pytest.raises(grammar.GrammarError):
        grammar.compile_schema(processor, {"type": "object", "properties": {"a": {"type": "no-such-type"}}})


def test_logprob_entries_cover_every_answer_token_once(loaded):
    processor, engine = loaded
    vocabulary = grammar.vocabulary(processor)
    options = {"max_tokens": 10, "temperature": 0, "ignore_eos": True}
    ((plain, n_plain, _, none),) = run(engine, [prompt(processor, **options)])
    ((text, tokens, finish, entries),) = run(engine, [prompt(processor, logprobs=2, **options)])
    assert (text, tokens) == (plain, n_plain) and none == []
    assert len(entries) == tokens == 10 and all(len(e.top) == 2 for e in entries)
    raw = b"".join(vocabulary.token_bytes(e.token) for e in entries)
    assert raw.decode(errors="replace") == text  # the bytes of the answer, token by token


def test_choice_seeds_differ_per_choice_and_keep_the_first():
    assert choice_seed(None, 3) is None
    assert choice_seed(7, 0) == 7
    assert len({choice_seed(7, i) for i in range(16)}) == 16


def test_constrained_decoding_overhead_per_token(loaded, capsys):
    """Not a limit: prints what the grammar adds per token (its mask, applied to the logits, and its
    advance), replayed over a constrained answer, next to a whole decode step of the tiny model."""
    processor, engine = loaded
    compiled = grammar.compile_schema(processor, SCHEMA)
    options = {"max_tokens": 80, "temperature": 1.0, "seed": 3}
    started = time.perf_counter()
    ((text, tokens, finish, _),) = run(engine, [prompt(processor, compiled.fresh(), **options)])
    per_step = (time.perf_counter() - started) / tokens
    assert finish == "stop"
    answer = processor.tokenizer.encode(text)
    vocab = engine.model.config.text_config.vocab_size
    best = float("inf")
    for _ in range(5):
        row = Row(stop_ids=frozenset(), suppress_ids=(), max_tokens=100, constraint=compiled.fresh())
        logits = torch.zeros(1, vocab)
        begun = time.perf_counter()
        for token in answer:
            constrain(logits, [row])
            row.constraint.consume(token)
        best = min(best, (time.perf_counter() - begun) / len(answer))
    with capsys.disabled():
        print(
            f"\nconstrained decoding: +{best * 1e6:.0f} us per token (a decode step: {per_step * 1e3:.1f} ms)"
        )


class _Format:
    def __init__(self, kind: str):
        self.type = kind
