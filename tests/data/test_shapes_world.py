"""The Shapes world against SHAPES.md: hand-built scenes for the language, sampled scenes for the geometry."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mm1.data import shapes
from mm1.data.shapes import COLOURS, Scene, ShapeObject, Word

BG = (240, 240, 240)


def obj(shape: str, colour: str, x0: int, y0: int = 10, side: int = 20) -> ShapeObject:
    return ShapeObject(shape, colour, COLOURS[colour], (x0, y0, x0 + side, y0 + side))


def scene(*objects: ShapeObject, word: str | None = None) -> Scene:
    return Scene(BG, tuple(objects), Word(word, 12, (5, 100, 25, 112)) if word else None)


# ------------------------------------------------------------------------------------------ captions


@pytest.mark.parametrize(
    "objects, word, expected",
    [
        ([obj("circle", "red", 10)], None, "a red circle"),
        ([obj("square", "orange", 10)], None, "an orange square"),
        # the spec's own example: groups by (colour, shape), the word as the last item
        (
            [obj("square", "blue", 60), obj("circle", "red", 10), obj("square", "blue", 90, 60)],
            "cat",
            "a red circle, two blue squares and the word cat",
        ),
        ([obj("circle", "red", 10)], "sun", "a red circle and the word sun"),
        (
            [obj("triangle", "green", x) for x in (10, 40, 70)] + [obj("circle", "purple", 100)],
            None,
            "three green triangles and a purple circle",
        ),
        (
            [obj("triangle", "yellow", x, y) for x, y in ((10, 10), (40, 10), (10, 60), (60, 60))],
            None,
            "four yellow triangles",
        ),
        # same colour, different shapes: two groups
        ([obj("square", "red", 50), obj("circle", "red", 10)], None, "a red circle and a red square"),
    ],
)
def test_caption_rules(objects, word, expected):
    assert shapes.caption(scene(*objects, word=word)) == expected


def test_groups_are_ordered_by_their_leftmost_object():
    # blue squares at x=5 and x=100; the red circle at x=50: the blue group's leftmost object comes first
    s = scene(obj("square", "blue", 100), obj("circle", "red", 50), obj("square", "blue", 5, 60))
    assert shapes.caption(s) == "two blue squares and a red circle"
    # moving the left square right of the circle flips the order
    s = scene(obj("square", "blue", 100), obj("circle", "red", 50), obj("square", "blue", 75, 60))
    assert shapes.caption(s) == "a red circle and two blue squares"


def test_three_groups_join_with_commas_and_a_final_and():
    s = scene(obj("circle", "red", 5), obj("square", "green", 40), obj("triangle", "orange", 80))
    assert shapes.caption(s) == "a red circle, a green square and an orange triangle"
    s = scene(obj("circle", "red", 5), obj("square", "green", 40), obj("triangle", "orange", 80), word="moon")
    assert shapes.caption(s) == "a red circle, a green square, an orange triangle and the word moon"


def test_captions_are_lower_case_without_final_period():
    rng = np.random.default_rng(3)
    for _ in range(200):
        text = shapes.caption(shapes.sample_scene(rng))
        assert text == text.lower() and not text.endswith(".")


def test_paraphrase_keeps_the_caption_content():
    rng = np.random.default_rng(4)
    for _ in range(50):
        s = shapes.sample_scene(rng)
        assert shapes.caption(s) in shapes.paraphrase(s, rng)


# ------------------------------------------------------------------------------------------ questions


def by_type(qs):
    return {q.type: q for q in qs}


def test_question_table_on_a_hand_built_scene():
    s = scene(obj("circle", "red", 5), obj("square", "blue", 40), obj("square", "green", 80), word="dog")
    for seed in range(30):
        qs = by_type(shapes.questions(s, np.random.default_rng(seed)))
        assert list(qs) == ["count_all", "count_kind", "colour_of", "shape_of", "exists", "word", "caption"]
        assert (qs["count_all"].question, qs["count_all"].answer) == ("how many shapes are there?", "3")
        # colour_of only for the circle (two squares): the only shape with exactly one object
        assert (qs["colour_of"].question, qs["colour_of"].answer) == ("what color is the circle?", "red")
        assert (
            qs["shape_of"].answer
            == {"red": "circle", "blue": "square", "green": "square"}[qs["shape_of"].question.split()[4]]
        )
        assert qs["shape_of"].question.startswith("what shape is the ") and qs["shape_of"].question.endswith(
            " object?"
        )
        assert (qs["word"].question, qs["word"].answer) == ("what word is written?", "dog")
        assert (qs["caption"].question, qs["caption"].answer) == ("describe the image.", shapes.caption(s))
        colour, shape = (
            qs["count_kind"].question.removeprefix("how many ").removesuffix("s are there?").split()
        )
        assert qs["count_kind"].answer == str(sum(o.colour == colour and o.shape == shape for o in s.objects))


def test_conditional_questions_are_skipped_when_they_do_not_apply():
    # two red circles: no shape or colour is unique, no word
    s = scene(obj("circle", "red", 5), obj("circle", "red", 60))
    qs = by_type(shapes.questions(s, np.random.default_rng(0)))
    assert set(qs) == {"count_all", "count_kind", "exists", "caption"}
    assert qs["caption"].answer == "two red circles"


def test_count_kind_asks_absent_kinds_too():
    s = scene(obj("circle", "red", 5))
    answers = {by_type(shapes.questions(s, np.random.default_rng(i)))["count_kind"].answer for i in range(40)}
    assert answers == {"0", "1"}


def test_exists_is_balanced_and_correct():
    rng = np.random.default_rng(11)
    yes = 0
    n = 2000
    for _ in range(n):
        s = shapes.sample_scene(rng)
        q = by_type(shapes.questions(s, rng))["exists"]
        words = q.question.removesuffix("?").split()
        assert words[:3] == ["is", "there", shapes.article(words[3])]
        present = any(o.colour == words[3] and o.shape == words[4] for o in s.objects)
        assert q.answer == ("yes" if present else "no")
        yes += q.answer == "yes"
    assert 0.45 < yes / n < 0.55


def test_answers_are_one_lower_case_word_with_digit_counts():
    rng = np.random.default_rng(5)
    for _ in range(300):
        for q in shapes.questions(shapes.sample_scene(rng), rng):
            if q.type == "caption":
                continue
            assert q.answer == q.answer.lower() and " " not in q.answer
            if q.type.startswith("count"):
                assert q.answer.isdigit() and 0 <= int(q.answer) <= 4


def test_every_question_asks_each_fact_once_and_balances_yes_and_no():
    s = scene(obj("circle", "red", 5), obj("square", "blue", 40), obj("square", "green", 80), word="dog")
    for seed in range(20):
        qs = shapes.every_question(s, np.random.default_rng(seed))
        kinds = [q.type for q in qs]
        assert len({q.question for q in qs}) == len(qs)  # no question twice
        assert kinds.count("count_all") == kinds.count("word") == kinds.count("caption") == 1
        # colour_of: only the circle's shape is unique; shape_of: every colour is
        assert [(q.question, q.answer) for q in qs if q.type == "colour_of"] == [
            ("what color is the circle?", "red")
        ]
        assert sorted((q.question.split()[4], q.answer) for q in qs if q.type == "shape_of") == [
            ("blue", "square"),
            ("green", "square"),
            ("red", "circle"),
        ]
        exists = [q for q in qs if q.type == "exists"]
        assert sorted(q.answer for q in exists) == ["no"] * 3 + ["yes"] * 3
        counts = {q.question: q.answer for q in qs if q.type == "count_kind"}
        assert counts["how many blue squares are there?"] == "1" and list(counts.values()).count("0") == 3
        for q in exists:
            colour, shape = q.question.removesuffix("?").split()[3:5]
            assert q.answer == ("yes" if any(o.kind == (colour, shape) for o in s.objects) else "no")
    # every question of the per-type table is one of these (same wording, same answer)
    rng = np.random.default_rng(4)
    for _ in range(200):
        sampled_scene = shapes.sample_scene(rng)
        pool = {(q.question, q.answer) for q in shapes.every_question(sampled_scene, rng)}
        for q in shapes.questions(sampled_scene, rng):
            if q.type not in ("count_kind", "exists") or q.answer not in ("0", "no"):
                assert (q.question, q.answer) in pool


# ------------------------------------------------------------------------------------------ geometry


@pytest.fixture(scope="module")
def sampled() -> list[Scene]:
    rng = np.random.default_rng(123)
    return [shapes.sample_scene(rng) for _ in range(600)]


def test_sampled_scenes_follow_the_spec(sampled):
    counts = [len(s.objects) for s in sampled]
    assert set(counts) == {1, 2, 3, 4}
    words = sum(s.word is not None for s in sampled) / len(sampled)
    assert 0.42 < words < 0.58
    for s in sampled:
        assert all(225 <= c <= 255 for c in s.background)
        boxes = [o.box for o in s.objects] + ([s.word.box] if s.word else [])
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= shapes.CANVAS and 0 <= y0 < y1 <= shapes.CANVAS
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            assert x1 - x0 == y1 - y0 and 18 <= x1 - x0 <= 36
            assert o.shape in shapes.SHAPES and o.colour in COLOURS
            base = COLOURS[o.colour]
            assert all(abs(c - b) <= 12 for c, b in zip(o.rgb, base, strict=True))
        for a, b in itertools.combinations(boxes, 2):  # at least 4 px of background between any two boxes
            gap_x = max(b[0] - a[2], a[0] - b[2])
            gap_y = max(b[1] - a[3], a[1] - b[3])
            assert max(gap_x, gap_y) >= 4
        if s.word:
            assert s.word.text in shapes.WORDS and 9 <= s.word.size <= 14


def test_colour_jitter_uses_the_whole_range(sampled):
    offsets = np.array([np.subtract(o.rgb, COLOURS[o.colour]) for s in sampled for o in s.objects])
    assert offsets.min() == -12 and offsets.max() == 12


def test_rendering_draws_objects_and_the_word_where_the_scene_says(sampled):
    for s in sampled[:150]:
        pixels = np.asarray(shapes.render(s))
        assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
        inside = np.zeros((128, 128), bool)
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            inside[y0:y1, x0:x1] = True
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2 + (x1 - x0) // 4  # low centre: inside the triangle too
            assert tuple(pixels[cy, cx]) == o.rgb
        if s.word:
            x0, y0, x1, y1 = s.word.box
            inside[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
        assert (pixels[~inside] == s.background).all()  # nothing is drawn outside the boxes
        dark = pixels.max(axis=2) < 100
        if s.word is None:
            assert not dark.any()
        else:
            ys, xs = np.nonzero(dark)
            x0, y0, x1, y1 = s.word.box
            assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1 and ys.max() <= y1
            assert ys.max() - ys.min() + 1 <= 14  # text height at most 14 px


def test_text_height_follows_the_font_size():
    # "dog" has an ascender and a descender: its ink spans the font size (9..14 px), within a pixel
    for size in range(9, 15):
        s = Scene(BG, (obj("circle", "red", 90, 90),), Word("dog", size, (5, 5, 5 + 40, 5 + size)))
        left, top, right, bottom = shapes.font(size).getbbox("dog")
        s = Scene(BG, s.objects, Word("dog", size, (5, 5, 5 + right - left, 5 + bottom - top)))
        dark = np.asarray(shapes.render(s)).max(axis=2) < 128
        ys = np.nonzero(dark)[0]
        assert abs((ys.max() - ys.min() + 1) - size) <= 1


def test_same_seed_same_world():
    a = [shapes.sample_scene(np.random.default_rng(9)) for _ in range(3)]
    b = [shapes.sample_scene(np.random.default_rng(9)) for _ in range(3)]
    assert a == b
    assert np.array_equal(np.asarray(shapes.render(a[0])), np.asarray(shapes.render(b[0])))
    assert Scene.from_dict(a[0].to_dict()) == a[0]


def test_text_sentences():
    lines = shapes.text_sentences(np.random.default_rng(0), 300)
    assert len(lines) == 300 and all(line and line == line.lower() for line in lines)
    assert "a triangle has three sides" in lines
    assert any(" and " in line and " make " in line for line in lines)


def test_kind_questions_draw_present_or_uniform_kinds_for_evaluation_only():
    """The opt-in evaluation draw (mm1.eval.heldout splits); `questions` keeps its half-present draw."""
    s = scene(obj("circle", "red", 5), obj("circle", "red", 40), obj("square", "blue", 80))
    present = {("red", "circle"), ("blue", "square")}
    seen: dict[str, set] = {"present": set(), "uniform": set()}
    for seed in range(400):
        rng = np.random.default_rng(seed)
        for draw in shapes.KIND_DRAWS:
            count, exists = shapes.kind_questions(s, rng, draw)
            assert (count.type, exists.type) == ("count_kind", "exists")
            colour, shape = count.question.removeprefix("how many ").removesuffix("s are there?").split()
            assert count.answer == {("red", "circle"): "2", ("blue", "square"): "1"}.get((colour, shape), "0")
            seen[draw].add((colour, shape))
            colour, shape = exists.question.removesuffix("?").split()[-2:]
            assert exists.answer == ("yes" if (colour, shape) in present else "no")
    assert seen["present"] == present
    assert len(seen["uniform"]) == len(COLOURS) * len(shapes.SHAPES)  # absent kinds too
    with pytest.raises(ValueError, match="unknown kind draw"):
        shapes.draw_kind(s, np.random.default_rng(0), "balanced")
