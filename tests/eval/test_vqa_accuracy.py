"""VQA answer normalization (the official evaluator's rules) and leave-one-out accuracy."""

from __future__ import annotations

import pytest

from mm1.eval.vqa import answer_score, exact_match, normalize_answer, score_vqa, vqa_accuracy


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # number words -> digits
        ("two", "2"),
        ("Ten", "10"),
        ("none", "0"),
        ("zero", "0"),
        ("eleven", "eleven"),  # the table stops at ten
        # articles removed, case folded
        ("The Dog", "dog"),
        ("a red circle", "red circle"),
        ("an apple", "apple"),
        ("the two", "2"),
        # periods: removed unless a digit follows (decimals survive)
        ("yes.", "yes"),
        ("3.5", "3.5"),
        ("0.5 inches.", "0.5 inches"),
        ("5.", "5"),  # the official look-behind is mistyped, so a period after a digit goes too
        # commas between digits: every mark is deleted, no spaces inserted
        ("1,000", "1000"),
        ("100,978", "100978"),
        # a mark touching a space is deleted; otherwise it becomes a space
        ("yes, it is", "yes it is"),
        ("red,blue", "red blue"),
        ("red/white", "red white"),
        ("black-and-white", "black and white"),
        ("hi -there", "hi there"),
        ("what?!", "what"),
        ("(blue)", "blue"),
        # not in the official list: kept
        ("#5", "#5"),
        ("it's 3:30", "it's 3:30"),
        ("50%", "50%"),
        # contractions restored
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("wouldnt've", "wouldn't've"),
        ("Im", "im"),  # the table's capitalised keys never match after lower-casing (official behaviour)
        # whitespace
        ("  yes\n", "yes"),
        ("two\tdogs", "2 dogs"),
    ],
)
def test_normalization(answer, expected):
    assert normalize_answer(answer) == expected


@pytest.mark.parametrize(
    ("matches", "expected"),
    # m humans of 10 gave the answer. Leaving out a matching human leaves m-1 matches, any other leaves m:
    # acc = (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_leave_one_out_by_hand(matches, expected):
    humans = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("cat", humans) == pytest.approx(expected)


def test_leave_one_out_matches_after_normalization():
    humans = ["2", "2", "two", "3", "3", "3", "3", "3", "3", "3"]
    assert vqa_accuracy("Two.", humans) == pytest.approx(0.9)  # three humans said 2
    assert vqa_accuracy("the 3", humans) == pytest.approx(1.0)


def test_leave_one_out_with_five_answers():
    # OK-VQA style: fewer humans, same rule over the n leave-one-out subsets.
    humans = ["red", "red", "blue", "green", "red"]
    assert vqa_accuracy("red", humans) == pytest.approx((3 * 2 / 3 + 2 * 1.0) / 5)


def test_leave_one_out_needs_several_answers():
    with pytest.raises(ValueError, match="exact_match"):
        vqa_accuracy("cat", ["cat"])
    with pytest.raises(ValueError, match="at least 2"):
        vqa_accuracy("cat", "cat")


def test_exact_match_for_single_reference():
    assert exact_match("Two.", "2") == 1.0
    assert exact_match("a circle", "circle") == 1.0
    assert exact_match("circles", "circle") == 0.0
    assert answer_score("yes", "yes") == 1.0
    assert answer_score("Yes!", ["yes"]) == 1.0
    assert answer_score("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)


def test_score_vqa_per_type_and_missing_predictions():
    references = {"q1": "2", "q2": "3", "q3": "yes", "q4": "no"}
    types = {"q1": "count", "q2": "count", "q3": "exists", "q4": "exists"}
    result = score_vqa({"q1": "two", "q2": "4", "q3": "Yes."}, references, types)  # q4 unanswered
    assert result.per_item == {"q1": 1.0, "q2": 0.0, "q3": 1.0, "q4": 0.0}
    assert result.per_type == {"count": 0.5, "exists": 0.5}
    assert result.counts == {"count": 2, "exists": 2}
    assert result.accuracy == 0.5
    assert result.as_metrics("shapes-vqa") == {
        "shapes-vqa/overall": 0.5,
        "shapes-vqa/count": 0.5,
        "shapes-vqa/exists": 0.5,
    }


def test_score_vqa_errors_name_the_ids():
    with pytest.raises(ValueError, match="unknown question ids: \\['zz'\\]"):
        score_vqa({"zz": "1"}, {"q1": "1"})
    with pytest.raises(ValueError, match="lacks question ids \\['q2'\\]"):
        score_vqa({}, {"q1": "1", "q2": "2"}, {"q1": "count"})
    with pytest.raises(ValueError, match="no questions"):
        score_vqa({}, {})


def test_without_types_everything_is_one_group():
    result = score_vqa({"a": "1"}, {"a": "1", "b": "2"})
    assert result.per_type == {"all": 0.5}
