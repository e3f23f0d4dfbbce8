"""Typed step outputs and the units a step runs once each: a sweep over a key multiplies exactly the steps that
read it, and outputs a skipped step left still serve candidates the sweep adds along keys it does not read."""

from __future__ import annotations

import json

from mm1.config import loads
from mm1.workflow.outputs import (
    Checkpoint,
    Dataset,
    IngestOutputs,
    TrainedRun,
    TrainOutputs,
    group_units,
    to_json,
)
from mm1.workflow.steps import PRETRAIN_UNIT, SFT_UNIT, data_variants
from mm1.workflow.sweep import candidates


def sweep(text: str):
    return loads(f"name: units\nsweep: {text}\n")


def units(wf) -> tuple[int, int, int]:
    cands = candidates(wf)
    return len(data_variants(wf)), len(group_units(cands, PRETRAIN_UNIT)), len(group_units(cands, SFT_UNIT))


def test_a_sweep_over_sft_lr_shares_ingest_and_pretraining():
    assert units(sweep("{sft.lr: [0.001, 0.0005]}")) == (1, 1, 2)


def test_a_mixture_sweep_multiplies_every_training_step():
    assert units(sweep("{data.mixture.captions: [0.2, 0.8]}")) == (2, 2, 2)


def test_a_model_sweep_shares_the_data():
    wf = sweep("{model.connector.type: [avgpool, c-abstractor], sft.lr: [0.001, 0.0005]}")
    assert units(wf) == (1, 2, 4)
    assert sorted(group_units(candidates(wf), PRETRAIN_UNIT)) == [
        "connector.type-avgpool",
        "connector.type-c-abstractor",
    ]


def test_no_sweep_is_one_base_unit_everywhere():
    wf = loads("name: plain\n")
    assert list(data_variants(wf)) == ["base"] and units(wf) == (1, 1, 1)


def run(step: int) -> TrainedRun:
    return TrainedRun(
        {}, f"ray/run-{step}", [Checkpoint(step, f"ray/run-{step}/checkpoint_{step}")], "m.jsonl"
    )


def test_outputs_left_by_a_skipped_step_serve_candidates_a_grown_sweep_adds():
    before = sweep("{sft.lr: [0.001, 0.0005]}")
    [(unit, _)] = group_units(candidates(before), PRETRAIN_UNIT).items()
    saved = json.loads(json.dumps(to_json(TrainOutputs("pretrain", list(PRETRAIN_UNIT), {unit: run(40)}))))
    pretrain = TrainOutputs.from_dict(saved)  # as the next run reads the manifest of the skipped step
    grown = sweep("{sft.lr: [0.001, 0.0005, 0.0001]}")
    assert [pretrain.for_candidate(c).last.step for c in candidates(grown)] == [40, 40, 40]


def test_outputs_round_trip_through_the_manifest_json():
    ingest = IngestOutputs(["data"], {"base": Dataset("p", "s", "t", "stats.json")})
    assert IngestOutputs.from_dict(json.loads(json.dumps(to_json(ingest)))) == ingest
    train = TrainOutputs("sft", list(SFT_UNIT), {"base": run(5)})
    again = TrainOutputs.from_dict(json.loads(json.dumps(to_json(train))))
    assert again == train and again.for_candidate(candidates(loads("name: x\n"))[0]).last.uri.endswith("_5")


def test_what_a_sweep_may_vary_is_what_the_training_steps_read():
    from mm1.config import SWEEPABLE

    assert set(SWEEPABLE) == set(SFT_UNIT)  # so every candidate maps to one run of each training step
