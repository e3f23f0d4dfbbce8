"""Majority-answer baselines: fitted on a training answer set, applied to the evaluated questions."""

from __future__ import annotations

import pytest

from mm1.eval.baselines import MajorityBaseline, baseline_scores, fit_majority

TRAIN = [
    ("exists", "yes"),
    ("exists", "no"),
    ("exists", "no"),
    ("count_all", "2"),
    ("count_all", "two"),  # normalized before counting: three votes for "2"
    ("count_all", "2"),
    ("count_all", "3"),
    ("word", "cat"),
    ("word", "dog"),  # a tie: the lexicographically smaller answer wins
]


def test_majority_per_type_with_normalization_and_ties():
    baseline = fit_majority(TRAIN, source="unit-test train split")
    assert baseline.answers == {"count_all": "2", "exists": "no", "word": "cat"}
    assert baseline.fallback == "2"  # most frequent over all types (3 votes)
    assert baseline.source == "unit-test train split"
    assert baseline.predict("shape_of") == "2"  # a type the training set lacked falls back


def test_order_of_examples_does_not_matter():
    assert fit_majority(TRAIN, "s") == fit_majority(list(reversed(TRAIN)), "s")


def test_multi_answer_questions_contribute_their_own_majority():
    examples = [("color", ["red"] * 6 + ["blue"] * 4), ("color", ["blue"] * 3 + ["red"] * 2 + ["green"] * 5)]
    # question 1 says red, question 2 says green: a tie between them, broken alphabetically
    assert fit_majority(examples, "vqa train").answers == {"color": "green"}


def test_baseline_is_scored_like_a_model_on_the_evaluated_set():
    baseline = fit_majority(TRAIN, source="train")
    # The evaluated set leans "yes" although training leaned "no": the baseline must not peek at it.
    references = {"e1": "yes", "e2": "yes", "e3": "yes", "e4": "no", "c1": "2", "c2": "4"}
    types = {
        "e1": "exists",
        "e2": "exists",
        "e3": "exists",
        "e4": "exists",
        "c1": "count_all",
        "c2": "count_all",
    }
    result = baseline_scores(baseline, references, types)
    assert result.per_type == {"count_all": 0.5, "exists": 0.25}
    assert result.accuracy == pytest.approx(2 / 6)


def test_source_is_required_and_examples_nonempty():
    with pytest.raises(ValueError, match="source"):
        fit_majority(TRAIN, source="")
    with pytest.raises(ValueError, match="no training answers"):
        fit_majority([], source="empty split")


def test_round_trips_through_a_dict():
    baseline = fit_majority(TRAIN, source="train")
    assert MajorityBaseline.from_dict(baseline.to_dict()) == baseline
