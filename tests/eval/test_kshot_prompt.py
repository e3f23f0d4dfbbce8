"""k-shot prompts: built with the shared chat template, demonstrations drawn deterministically, never the query."""

from __future__ import annotations

import random

import pytest

from mm1.data.chat import ASSISTANT, BOS, END, EOS, IMAGE, USER, ImageSlot, encode_document, encode_prompt
from mm1.data.tokenizer import train_bpe_tokenizer
from mm1.eval.kshot import Demo, build_kshot_prompt, draw_demos, style_for_stage

IMAGE_TOKENS = 3
CAPTIONS = [
    "a red circle",
    "two blue squares",
    "a green triangle and the word sun",
    "an orange square",
    "three purple circles",
    "a yellow triangle, a red square and the word cat",
    "four green squares",
    "a blue circle and the word moon",
]
POOL = [Demo(key=f"s{i}", image=f"img-{i}.png", caption=c) for i, c in enumerate(CAPTIONS)]
QUERY = Demo(key="s3", image="img-3.png", caption="an orange square")  # the query is also in the pool


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CAPTIONS * 4 + ["describe the image."] * 4, vocab_size=300)


def _image_runs(ids: list[int], image_id: int) -> int:
    return sum(1 for i, t in enumerate(ids) if t == image_id and (i == 0 or ids[i - 1] != image_id))


@pytest.mark.parametrize("k", [0, 1, 4])
def test_document_prompt_is_the_pretraining_document_without_its_end(tokenizer, k):
    prompt = build_kshot_prompt(tokenizer, QUERY, POOL, k=k, seed=7, image_tokens=IMAGE_TOKENS)
    parts = [p for d in prompt.demos for p in (ImageSlot(), d.caption)] + [ImageSlot()]
    expected = encode_document(tokenizer, parts, IMAGE_TOKENS).input_ids[:-1]
    assert [p if isinstance(p, str) else "<slot>" for p in prompt.parts] == [
        p if isinstance(p, str) else "<slot>" for p in parts
    ]
    assert prompt.turns == []
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    assert prompt.style == "document"
    assert prompt.input_ids == expected
    assert prompt.input_ids[0] == tokenizer.convert_tokens_to_ids(BOS)
    assert prompt.input_ids[-IMAGE_TOKENS:] == [image_id] * IMAGE_TOKENS  # the query image comes last
    assert _image_runs(prompt.input_ids, image_id) == k + 1
    assert tokenizer.convert_tokens_to_ids(EOS) not in prompt.input_ids
    assert set(prompt.stop_token_ids) == {tokenizer.convert_tokens_to_ids(EOS), image_id}
    assert prompt.images == [d.image for d in prompt.demos] + [QUERY.image]
    decoded = tokenizer.decode(prompt.input_ids)
    positions = [decoded.index(d.caption) for d in prompt.demos]
    assert positions == sorted(positions)  # captions in demonstration order


def test_chat_prompt_uses_encode_prompt(tokenizer):
    prompt = build_kshot_prompt(tokenizer, QUERY, POOL, k=2, seed=7, image_tokens=IMAGE_TOKENS, style="chat")
    user = f"{IMAGE}\ndescribe the image."
    turns = []
    for d in prompt.demos:
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": d.caption}]
    turns.append({"role": "user", "content": user})
    assert prompt.input_ids == encode_prompt(tokenizer, turns, IMAGE_TOKENS).input_ids
    assert prompt.turns == turns and prompt.parts == []
    decoded = tokenizer.decode(prompt.input_ids)
    assert decoded.count(USER) == 3 and decoded.endswith(f"{ASSISTANT}\n")
    assert tokenizer.convert_tokens_to_ids(END) in prompt.stop_token_ids
    assert _image_runs(prompt.input_ids, tokenizer.convert_tokens_to_ids(IMAGE)) == 3


def test_never_draws_the_query():
    for seed in range(200):
        demos = draw_demos(POOL, k=7, seed=seed, query_key=QUERY.key)
        assert QUERY.key not in [d.key for d in demos]
        assert len({d.key for d in demos}) == 7  # without replacement: every other pool item


def test_deterministic_for_a_seed_and_independent_of_pool_order():
    first = draw_demos(POOL, k=4, seed=11, query_key="s3")
    shuffled = POOL[:]
    random.Random(0).shuffle(shuffled)
    assert draw_demos(shuffled, k=4, seed=11, query_key="s3") == first
    assert draw_demos(POOL, k=4, seed=11, query_key="s3") == first


def test_seed_and_query_change_the_draw():
    draws = {tuple(d.key for d in draw_demos(POOL, k=4, seed=s, query_key="s3")) for s in range(20)}
    assert len(draws) > 10
    per_query = {tuple(d.key for d in draw_demos(POOL, k=4, seed=1, query_key=f"s{q}")) for q in range(8)}
    assert len(per_query) > 4


def test_errors():
    with pytest.raises(ValueError, match="pool holds only 7"):
        draw_demos(POOL, k=8, seed=0, query_key="s3")
    with pytest.raises(ValueError, match="k must be >= 0"):
        draw_demos(POOL, k=-1, seed=0, query_key="s3")


def test_unknown_style(tokenizer):
    with pytest.raises(ValueError, match="unknown prompt style"):
        build_kshot_prompt(tokenizer, QUERY, POOL, k=1, seed=0, image_tokens=1, style="flamingo")


def test_style_for_stage():
    assert style_for_stage("pretrain") == "document"
    assert style_for_stage("sft") == "chat"
    with pytest.raises(ValueError, match="unknown training stage"):
        style_for_stage("rlhf")


VQA_POOL = [
    Demo(key=f"q{i}", image=f"img-{i // 2}.png", caption=a, question=q, image_key=f"img-{i // 2}.png")
    for i, (q, a) in enumerate(
        [
            ("how many shapes are there?", "2"),
            ("is there a red circle?", "yes"),
            ("what color is the square?", "blue"),
            ("what word is written?", "cat"),
            ("how many blue squares are there?", "1"),
            ("what shape is the green object?", "triangle"),
        ]
    )
]


def test_vqa_document_prompt_shows_questions_and_answers_then_the_query_question(tokenizer):
    query = Demo("q0", "img-0.png", "", question="is there a red circle?", image_key="img-0.png")
    prompt = build_kshot_prompt(
        tokenizer, query, VQA_POOL, k=3, seed=5, image_tokens=IMAGE_TOKENS, task="vqa"
    )
    # Two pool questions are about the query's image (img-0): neither is shown.
    assert {d.image_id for d in prompt.demos}.isdisjoint({"img-0.png"}) and len(prompt.demos) == 3
    expected = []
    for d in prompt.demos:
        expected += [ImageSlot(), f"question: {d.question} answer: {d.caption}"]
    expected += [ImageSlot(), "question: is there a red circle? answer:"]
    assert [p if isinstance(p, str) else "<slot>" for p in prompt.parts] == [
        p if isinstance(p, str) else "<slot>" for p in expected
    ]
    assert prompt.input_ids == encode_document(tokenizer, expected, IMAGE_TOKENS).input_ids[:-1]
    assert prompt.images == [d.image for d in prompt.demos] + ["img-0.png"]
    with pytest.raises(ValueError, match="pool holds only 4"):
        build_kshot_prompt(tokenizer, query, VQA_POOL, k=5, seed=5, image_tokens=IMAGE_TOKENS, task="vqa")


def test_vqa_chat_prompt_asks_each_question(tokenizer):
    query = Demo("x", "img-9.png", "", question="what word is written?")
    prompt = build_kshot_prompt(
        tokenizer, query, VQA_POOL, k=2, seed=5, image_tokens=IMAGE_TOKENS, style="chat", task="vqa"
    )
    turns = []
    for d in prompt.demos:
        turns += [
            {"role": "user", "content": f"{IMAGE}\n{d.question}"},
            {"role": "assistant", "content": d.caption},
        ]
    assert prompt.turns == turns + [{"role": "user", "content": f"{IMAGE}\nwhat word is written?"}]
    with pytest.raises(ValueError, match="unknown k-shot task"):
        build_kshot_prompt(tokenizer, query, VQA_POOL, k=1, seed=0, image_tokens=1, task="ocr")
