"""Winner selection across candidates x checkpoints: ranking, tie-breaking, errors and winner.json."""

from __future__ import annotations

import json
import math

import pytest

from mm1.eval.select import TIE_BREAK, CandidateResult, rank_results, select_winner

M = "shapes-vqa/overall"


def result(candidate: str, step: int, value: float, **extra: float) -> CandidateResult:
    return CandidateResult(
        candidate=candidate,
        checkpoint=f"runs/r/sft/{candidate}/step_{step}",
        metrics={M: value, "shapes-caption/cider": 0.5} | extra,
        step=step,
    )


RESULTS = [
    result("avgpool", 100, 0.50),
    result("avgpool", 200, 0.58),
    result("cabs", 100, 0.61),
    result("cabs", 200, 0.55),
]


def test_max_picks_the_best_checkpoint_and_reports_runner_up_and_margin():
    winner = select_winner(RESULTS, M, "max")
    assert (winner.result.candidate, winner.result.step) == ("cabs", 100)
    assert winner.value == 0.61
    assert (winner.runner_up.candidate, winner.runner_up.step) == ("avgpool", 200)
    assert winner.margin == pytest.approx(0.03)
    assert winner.best_other_candidate.candidate == "avgpool"
    assert [r.metrics[M] for r in winner.ranking] == [0.61, 0.58, 0.55, 0.50]


def test_min_mode():
    winner = select_winner(RESULTS, M, "min")
    assert (winner.result.candidate, winner.result.step, winner.margin) == (
        "avgpool",
        100,
        pytest.approx(0.05),
    )


def test_runner_up_may_be_the_same_candidate_but_best_other_is_not():
    results = [result("a", 100, 0.9), result("a", 200, 0.8), result("b", 100, 0.7)]
    winner = select_winner(results, M)
    assert winner.runner_up.checkpoint.endswith("a/step_200")
    assert winner.best_other_candidate.candidate == "b"
    assert winner.to_dict()["margin_over_other_candidate"] == pytest.approx(0.2)


def test_ties_go_to_fewer_steps_then_candidate_name():
    tied = [result("zeta", 100, 0.6), result("alpha", 200, 0.6), result("beta", 200, 0.6)]
    order = [(r.candidate, r.step) for r in rank_results(tied, M, "max")]
    assert order == [("zeta", 100), ("alpha", 200), ("beta", 200)]
    assert select_winner(tied, M).margin == 0.0


def test_values_equal_to_12_digits_tie():
    a = result("b", 100, 0.1 + 0.2)  # 0.30000000000000004
    b = result("a", 100, 0.3)
    assert select_winner([a, b], M).result.candidate == "a"  # a tie, so the name decides


def test_nan_never_wins():
    results = [result("a", 100, math.nan), result("b", 100, 0.1)]
    winner = select_winner(results, M, "max")
    assert winner.result.candidate == "b"
    assert winner.margin is None  # no comparable runner-up
    assert select_winner(results, M, "min").result.candidate == "b"
    with pytest.raises(ValueError, match="every result has NaN"):
        select_winner([result("a", 1, math.nan)], M)


def test_missing_metric_names_the_available_ones():
    broken = CandidateResult("c", "runs/c/step_1", {"shapes-caption/cider": 0.4, "shapes-vqa/exists": 0.5}, 1)
    with pytest.raises(KeyError) as err:
        select_winner(RESULTS + [broken], M)
    message = str(err.value)
    assert "'shapes-vqa/overall' is missing" in message and "candidate 'c'" in message
    assert "available metrics: shapes-caption/cider, shapes-vqa/exists" in message


def test_other_errors():
    with pytest.raises(ValueError, match="mode must be"):
        select_winner(RESULTS, M, "best")
    with pytest.raises(ValueError, match="no evaluation results"):
        select_winner([], M)
    with pytest.raises(ValueError, match="appears twice"):
        select_winner([RESULTS[0], RESULTS[0]], M)


def test_null_metrics_read_as_nan():
    parsed = CandidateResult.from_dict({"candidate": "a", "checkpoint": "c", "metrics": {M: None, "x": 1}})
    assert math.isnan(parsed.metrics[M]) and parsed.metrics["x"] == 1.0
    assert (parsed.step, parsed.stage) == (0, "sft")


def test_writes_winner_json_from_plain_dicts(tmp_path):
    dicts = [
        {
            "candidate": r.candidate,
            "checkpoint": r.checkpoint,
            "step": r.step,
            "stage": "sft",
            "metrics": r.metrics,
        }
        for r in RESULTS
    ]
    winner = select_winner(dicts, M, "max", out_dir=tmp_path / "select")
    written = json.loads((tmp_path / "select" / "winner.json").read_text())
    assert written == winner.to_dict()
    assert written["checkpoint"] == "runs/r/sft/cabs/step_100"
    assert written["metric"] == M and written["mode"] == "max" and written["value"] == 0.61
    assert written["metrics"] == {M: 0.61, "shapes-caption/cider": 0.5}
    assert written["runner_up"]["checkpoint"] == "runs/r/sft/avgpool/step_200"
    assert written["margin"] == pytest.approx(0.03)
    assert written["tie_break"] == TIE_BREAK and written["num_results"] == 4


def test_winner_json_is_strict_json(tmp_path):
    results = [result("a", 1, 0.5, extra=math.nan, loss=math.inf), result("b", 1, math.nan)]
    select_winner(results, M, out_dir=tmp_path)
    text = (tmp_path / "winner.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    written = json.loads(text)
    assert written["metrics"]["extra"] is None and written["metrics"]["loss"] is None
    assert written["runner_up"]["value"] is None
