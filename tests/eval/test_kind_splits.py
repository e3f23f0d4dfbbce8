"""count_kind and exists split by how the kind is drawn (issue 18): present kinds vs all 18 colour-shape pairs.

No model here: predictions are constructed and scored exactly as the evaluate step scores a model's answers.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from mm1 import config
from mm1.data import shapes
from mm1.eval.baselines import baseline_scores
from mm1.eval.benchmarks import build_benchmarks, question_counts, score
from mm1.eval.heldout import (
    SPLIT_STREAM,
    SPLIT_TYPES,
    kind_split_questions,
    shapes_heldout,
    shapes_majority_baseline,
)
from mm1.eval.items import is_split
from mm1.eval.report import SPLITS_NOTE, write_report
from mm1.eval.table import per_type_table

SEED = 1_000_003
NUM_SCENES, NUM_QUESTIONS = 300, 600
KINDS = len(shapes.COLOURS) * len(shapes.SHAPES)


@pytest.fixture(scope="module")
def heldout():
    return shapes_heldout(NUM_SCENES, NUM_QUESTIONS, SEED)


@pytest.fixture(scope="module")
def baseline():
    return shapes_majority_baseline(0)


@pytest.fixture(scope="module")
def bench(heldout):
    overrides = [f"evaluate.num_scenes={NUM_SCENES}", f"evaluate.num_questions={NUM_QUESTIONS}"]
    wf = config.loads(
        "name: t\n", overrides=[*overrides, f"evaluate.seed={SEED}", "evaluate.benchmarks=[shapes-vqa]"]
    )
    (vqa,) = build_benchmarks(wf.evaluate, heldout)
    return vqa


def _scenes(n: int, seed: int) -> list[shapes.Scene]:
    rng = np.random.default_rng(seed)
    return [shapes.sample_scene(rng) for _ in range(n)]


def test_the_heldout_set_has_both_splits_one_question_per_scene_each(heldout):
    questions, captions = heldout
    counts = Counter(q.type for q in questions)
    assert {t: counts[t] for t in SPLIT_TYPES} == {t: NUM_SCENES for t in SPLIT_TYPES}
    main = [q for q in questions if not is_split(q.type)]
    assert len(main) == NUM_QUESTIONS and len(captions) == NUM_SCENES
    # The uniform split is at least as large as the present split, and larger than the main count_kind set.
    assert counts["count_kind.uniform"] >= counts["count_kind.present"] > counts["count_kind"]
    assert len({q.key for q in questions}) == len(questions)
    # The main questions do not depend on the splits: their own stream, drawn after them.
    assert main == [q for q in shapes_heldout(NUM_SCENES, NUM_QUESTIONS, SEED)[0] if not is_split(q.type)]


def test_split_answers_are_right_and_present_kinds_are_present():
    rng = np.random.default_rng([7, SPLIT_STREAM])
    for scene in _scenes(300, 7):
        qs = kind_split_questions(scene, rng)
        assert [q.type for q in qs] == list(SPLIT_TYPES)
        for q in qs:
            if q.type.startswith("count_kind"):
                colour, shape = q.question.removeprefix("how many ").removesuffix("s are there?").split()
                assert q.answer == str(sum(o.kind == (colour, shape) for o in scene.objects))
            else:
                colour, shape = q.question.removesuffix("?").split()[-2:]
                assert q.answer == ("yes" if any(o.kind == (colour, shape) for o in scene.objects) else "no")
            if q.type.endswith(".present"):
                assert q.answer not in ("0", "no")


def test_uniform_kinds_are_absent_at_the_expected_rate(heldout):
    """A uniformly drawn kind is absent with probability 1 - (distinct kinds in the scene) / 18."""
    questions, _ = heldout
    scenes = _scenes(NUM_SCENES, SEED)  # shapes_heldout draws its scenes first from default_rng(seed)
    expected = sum(1 - len({o.kind for o in s.objects}) / KINDS for s in scenes)
    sd = math.sqrt(sum((p := len({o.kind for o in s.objects}) / KINDS) * (1 - p) for s in scenes))
    for split, absent in (("count_kind.uniform", "0"), ("exists.uniform", "no")):
        observed = sum(q.answer == absent for q in questions if q.type == split)
        assert abs(observed - expected) < 4 * sd, (split, observed, expected)
        assert 0.8 * NUM_SCENES < observed < 0.95 * NUM_SCENES  # mostly absent (about 87%), not all
    for split, absent in (("count_kind.present", "0"), ("exists.present", "no")):
        assert not any(q.answer == absent for q in questions if q.type == split)


def test_each_split_has_its_own_majority_fitted_on_training_answers(baseline, heldout):
    assert {t: baseline.answers[t] for t in SPLIT_TYPES} == {
        "count_kind.present": "1",
        "count_kind.uniform": "0",
        "exists.present": "yes",
        "exists.uniform": "no",
    }
    assert "seed 0" in baseline.source and all(t in baseline.source for t in SPLIT_TYPES)
    # The base types keep their own majority, fitted on the corpus generator's questions.
    assert (baseline.answers["count_kind"], baseline.answers["exists"]) == ("0", "no")
    # overall of the baseline counts the main questions only, as a model's does.
    questions, _ = heldout
    main = [q for q in questions if not is_split(q.type)]
    everything = baseline_scores(
        baseline, {q.key: q.answer for q in questions}, {q.key: q.type for q in questions}
    )
    only_main = baseline_scores(baseline, {q.key: q.answer for q in main}, {q.key: q.type for q in main})
    assert everything.accuracy == pytest.approx(only_main.accuracy)


def _predict(bench, answer) -> dict[str, str]:
    return {bench.task_key(item): answer(item) for item in bench.items}


def test_majority_answers_score_exactly_at_each_split_baseline(bench, baseline):
    questions = bench.items
    base = baseline_scores(
        baseline, {q.key: q.answer for q in questions}, {q.key: q.type for q in questions}
    ).as_metrics("shapes-vqa")
    majority = score(bench, _predict(bench, lambda q: baseline.predict(q.type)))
    for split in SPLIT_TYPES:
        assert majority[f"shapes-vqa/{split}"] == base[f"shapes-vqa/{split}"]
    # The uniform split's majority is 0 / no on about 87% of its questions: a high bar, hard to fake.
    assert (
        0.8 < base["shapes-vqa/count_kind.uniform"] < 0.95 and 0.8 < base["shapes-vqa/exists.uniform"] < 0.95
    )
    # overall is the mean over the main questions only.
    main = [q for q in questions if not is_split(q.type)]
    assert majority["shapes-vqa/overall"] == pytest.approx(
        sum(baseline.predict(q.type) == q.answer for q in main) / len(main)
    )


def test_a_model_that_only_sees_presence_is_caught_by_the_present_split(bench, baseline):
    """Answering '1' for any present kind and '0' otherwise (never counting) looks strong on the mixed
    count_kind, where half the kinds are absent, and is exactly the majority baseline on count_kind.present."""
    questions = bench.items
    base = baseline_scores(
        baseline, {q.key: q.answer for q in questions}, {q.key: q.type for q in questions}
    ).as_metrics("shapes-vqa")
    presence_only = score(bench, _predict(bench, lambda q: "1" if q.answer != "0" else "0"))
    assert presence_only["shapes-vqa/count_kind.present"] == base["shapes-vqa/count_kind.present"]
    assert presence_only["shapes-vqa/count_kind"] > base["shapes-vqa/count_kind"] + 0.3
    # A model answering the present-kind majority ('1') whatever the kind scores far below the uniform
    # split's baseline; answering 'yes' to every exists question sits at baseline only on exists.present.
    always_one = score(bench, _predict(bench, lambda q: "1" if q.type.startswith("count_kind") else "yes"))
    assert always_one["shapes-vqa/count_kind.uniform"] < base["shapes-vqa/count_kind.uniform"] - 0.5
    assert always_one["shapes-vqa/exists.present"] == base["shapes-vqa/exists.present"] == 1.0
    assert always_one["shapes-vqa/exists.uniform"] < base["shapes-vqa/exists.uniform"] - 0.5


def test_results_state_the_split_sizes(bench):
    counts = question_counts(bench)
    assert counts["shapes-vqa/overall"] == NUM_QUESTIONS
    assert all(counts[f"shapes-vqa/{t}"] == NUM_SCENES for t in SPLIT_TYPES)
    assert f"count_kind.uniform {NUM_SCENES}" in bench.source and f"{NUM_QUESTIONS} questions" in bench.source


def _winner_metrics(bench, baseline) -> tuple[dict[str, float], dict[str, float]]:
    questions = bench.items
    base = baseline_scores(
        baseline, {q.key: q.answer for q in questions}, {q.key: q.type for q in questions}
    ).as_metrics("shapes-vqa")
    return score(bench, _predict(bench, lambda q: q.answer)), base  # a perfect model


def test_the_console_table_shows_each_split_beside_its_baseline(bench, baseline):
    metrics, base = _winner_metrics(bench, baseline)
    table = per_type_table(metrics, base, "shapes-vqa", counts=question_counts(bench))
    names = [row[0] for row in table.rows]
    # Splits sit right under their base type; overall last.
    assert names[names.index("count_kind") : names.index("count_kind") + 3] == [
        "count_kind",
        "count_kind.present",
        "count_kind.uniform",
    ]
    assert names[names.index("exists") : names.index("exists") + 3] == [
        "exists",
        "exists.present",
        "exists.uniform",
    ]
    assert names[-1] == "overall"
    assert table.header == ["type", "score", "majority baseline", "gain", "questions"]
    rows = {row[0]: row for row in table.rows}
    for split in SPLIT_TYPES:
        b = base[f"shapes-vqa/{split}"]
        assert rows[split] == [split, "1.000", f"{b:.3f}", f"{1 - b:+.3f}", str(NUM_SCENES)]
    assert rows["overall"][-1] == str(NUM_QUESTIONS)
    text = table.to_text()
    assert "count_kind.uniform" in text and "exists.present" in text


def test_the_report_shows_both_splits_beside_their_baselines(bench, baseline, tmp_path):
    metrics, base = _winner_metrics(bench, baseline)
    summary = {
        "name": "splits",
        "candidates": [{"name": "c", "overrides": {}, "metrics_files": []}],
        "eval": [
            {
                "candidate": "c",
                "checkpoint": "runs/c/sft/step_1",
                "stage": "sft",
                "step": 1,
                "metrics": metrics,
            }
        ],
        "baselines": base,
        "baseline_source": baseline.source,
        "selection": {"metric": "shapes-vqa/overall", "mode": "max"},
    }
    page = write_report(tmp_path, summary).read_text()
    start = page.index("winner on shapes-vqa, per type")
    per_type = page[start : page.index("</table>", start)]
    for split in SPLIT_TYPES:
        b = base[f"shapes-vqa/{split}"]
        assert (
            f'<td class="txt">{split}</td><td class="num">1.000</td><td class="num">{b:.3f}</td>' in per_type
        )
    assert SPLITS_NOTE.split(":")[0] in page
