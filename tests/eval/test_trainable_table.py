"""The run report's trainable-parameters table, from the `trainable_params` the training loop puts on the
first metric row of each start (mm1.train.loop)."""

from __future__ import annotations

from mm1.eval.report import trainable_table

COUNTS = {"vision": 0, "connector": 100, "llm": 0, "lora": 300, "all": 4000}


def test_one_row_per_candidate_and_stage_the_last_start_wins():
    curves = {
        "base": [
            {"stage": "sft", "step": 1, "loss": 1.0, "trainable_params": {**COUNTS, "lora": 1}},
            {
                "stage": "pretrain",
                "step": 1,
                "loss": 2.0,
                "trainable_params": {**COUNTS, "lora": 0, "llm": 3000},
            },
            {"stage": "sft", "step": 5, "loss": 0.5, "resumed_from": 4, "trainable_params": COUNTS},
            {"stage": "sft", "step": 6, "loss": 0.4},
        ]
    }
    table = trainable_table(curves)
    assert table is not None
    assert [r[:2] for r in table.rows] == [["base", "pretrain"], ["base", "sft"]]
    assert table.rows[1][2:] == ["0", "100", "0", "300", "400", "4,000", "10.00%"]


def test_no_table_without_counts():
    assert trainable_table({"base": [{"stage": "sft", "step": 1, "loss": 1.0}]}) is None
