"""Terminal/HTML metric tables: baselines aligned under their metric columns, per-type gains."""

from __future__ import annotations

import math

import pytest

from mm1.eval.select import CandidateResult
from mm1.eval.table import BASELINE_LABEL, Table, kshot_metrics, kshot_table, metric_table, per_type_table

RESULTS = [
    CandidateResult(
        "image_size-64", "runs/r/sft/b/step_200", {"vqa/overall": 0.64, "vqa/count": 0.5, "cider": 0.9}, 200
    ),
    CandidateResult("image_size-32", "runs/r/sft/a/step_200", {"vqa/overall": 0.54, "cider": math.nan}, 200),
    CandidateResult(
        "image_size-32", "runs/r/sft/a/step_100", {"vqa/overall": 0.5, "vqa/count": 0.3, "cider": 0.7}, 100
    ),
]
BASELINES = {"vqa/overall": 0.31, "vqa/count": 0.25}


def _column_end(line: str, text: str) -> int:
    return line.index(text) + len(text)


def test_baseline_row_is_aligned_under_its_metric_columns():
    lines = metric_table(RESULTS, ["vqa/overall", "vqa/count", "cider"], BASELINES).to_text().splitlines()
    header, rule, base, *rows = lines
    assert base.startswith(BASELINE_LABEL)
    # Numbers are right-aligned: the baseline and every row end where the column's header ends.
    for column, base_value in [("vqa/overall", "0.310"), ("vqa/count", "0.250")]:
        end = _column_end(header, column)
        assert base[end - len(base_value) : end] == base_value
        for row in rows:
            assert row[end - 5 : end].strip()  # a value or "-" sits in that column on every row
    assert base[_column_end(header, "cider") - 1] == "-"  # no baseline for cider: a dash in its column
    assert len(rule.split()) == len(header.split())


def test_rows_sorted_by_candidate_then_step_and_missing_values_dashed():
    table = metric_table(RESULTS, ["vqa/overall", "vqa/count", "cider"], BASELINES)
    assert [r[:3] for r in table.rows[1:]] == [
        ["image_size-32", "sft", "100"],
        ["image_size-32", "sft", "200"],
        ["image_size-64", "sft", "200"],
    ]
    assert table.rows[2][3:] == ["0.540", "-", "-"]  # vqa/count absent, cider NaN


def test_no_baseline_row_without_baselines_and_default_metrics_are_all_sorted():
    table = metric_table(RESULTS)
    assert table.header == ["candidate", "stage", "step", "cider", "vqa/count", "vqa/overall"]
    assert all(row[0] != BASELINE_LABEL for row in table.rows)


def test_checkpoint_column_and_highlight():
    table = metric_table(
        RESULTS, baselines=BASELINES, show_checkpoint=True, highlight_checkpoint="runs/r/sft/b/step_200"
    )
    assert table.header[3] == "checkpoint"
    highlighted = [table.rows[i][3] for i in table.emphasis if table.rows[i][0] != BASELINE_LABEL]
    assert highlighted == ["runs/r/sft/b/step_200"]


def test_per_type_table_puts_overall_last_with_gains():
    table = per_type_table(RESULTS[0].metrics, BASELINES, "vqa")
    assert table.rows == [["count", "0.500", "0.250", "+0.250"], ["overall", "0.640", "0.310", "+0.330"]]
    with_null = per_type_table({"vqa/overall": None, "vqa/count": math.nan}, BASELINES, "vqa")
    assert with_null.rows == [["count", "-", "0.250", "-"], ["overall", "-", "0.310", "-"]]
    with pytest.raises(KeyError, match="no shapes-vqa/"):
        per_type_table(RESULTS[0].metrics, BASELINES, "shapes-vqa")


def test_html_is_escaped_and_rows_must_fit_the_header():
    html = Table(["name", "value"], [["<b>x</b>", "1"]]).to_html()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>" not in html
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        Table(["name", "value"], [["only"]])


def test_kshot_table_puts_each_k_side_by_side_once_per_prompted_checkpoint():
    def row(name: str, stage: str, step: int, scores: dict[int, float], source: dict | None = None) -> dict:
        metrics = {f"coco-caption-kshot/cider@{k}": v for k, v in scores.items()} | {"vqa/overall": 0.5}
        base = {"candidate": name, "checkpoint": f"runs/{name}/{stage}/{step}", "stage": stage, "step": step}
        return base | {"metrics": metrics} | ({"kshot": source} if source else {})

    pretrained = {
        "checkpoint": "runs/a/pretrain/40",
        "step": 40,
        "stage": "pretrain",
        "prompt_style": "document",
    }
    results = [
        # Two SFT checkpoints of one candidate carry the same pre-trained checkpoint's k-shot scores.
        row("a", "sft", 20, {0: 0.1, 4: 0.3, 8: 0.4}, pretrained),
        row("a", "sft", 10, {0: 0.1, 4: 0.3, 8: 0.4}, pretrained),
        row("b", "pretrain", 40, {0: 0.2, 4: math.nan}),
    ]
    table = kshot_table(results, "coco-caption-kshot/cider", [0, 4, 8], highlight_checkpoint="runs/a/sft/20")
    assert table.header == ["candidate", "stage", "step", "k=0", "k=4", "k=8"]
    assert table.rows == [
        ["a", "pretrain", "40", "0.100", "0.300", "0.400"],
        ["b", "pretrain", "40", "0.200", "-", "-"],
    ]
    assert table.emphasis == {0}  # the winner's k-shot scores came from this row
    assert table.title == "coco-caption-kshot/cider by k"
    assert kshot_metrics(results) == {"coco-caption-kshot/cider": [0, 4, 8]}
    text = table.to_text().splitlines()
    assert text[1].split() == table.header
