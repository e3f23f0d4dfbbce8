"""The runner's skip/rerun logic, on real run folders with small real steps (no Ray needed)."""

from __future__ import annotations

import pytest

from mm1.config import loads
from mm1.workflow.rundir import RunDir
from mm1.workflow.runner import Step, StepFailed, StepResult, run_workflow, step_states
from mm1.workflow.steps import workflow_steps


def counting_steps(calls: list[str]) -> list[Step]:
    def make(name: str):
        def run(ctx):
            calls.append(name)
            (ctx.out / "artifact.txt").write_text(name)
            return StepResult(outputs={"file": str(ctx.out / "artifact.txt")}, headline={"n": len(calls)})

        return run

    # The workflow's real steps (names, inputs and the keys they read), each replaced by a counter.
    real = {s.name: s for s in workflow_steps()}
    return [
        Step(name, real[name].depends, real[name].config_keys, make(name))
        for name in ("ingest", "pretrain", "sft", "evaluate")
    ]


def workflow(tmp_path, extra: str = ""):
    return loads(f"name: t\nstorage:\n  root: {tmp_path}\n{extra}")


def test_rerun_skips_finished_steps(tmp_path):
    calls: list[str] = []
    logs: list[str] = []
    run_workflow(workflow(tmp_path), counting_steps(calls), log=logs.append)
    assert calls == ["ingest", "pretrain", "sft", "evaluate"]
    run_workflow(workflow(tmp_path), counting_steps(calls), log=logs.append)
    assert calls == ["ingest", "pretrain", "sft", "evaluate"]  # nothing ran again
    assert sum("skipped" in line for line in logs) == 4


def test_changing_sft_reruns_sft_and_what_follows_only(tmp_path):
    calls: list[str] = []
    run_workflow(workflow(tmp_path), counting_steps(calls), log=lambda _: None)
    calls.clear()
    run_workflow(workflow(tmp_path, "sft:\n  steps: 7\n"), counting_steps(calls), log=lambda _: None)
    assert calls == ["sft", "evaluate"]


def test_materializing_reruns_nothing_and_packing_reruns_training_not_ingest(tmp_path):
    calls: list[str] = []
    run_workflow(workflow(tmp_path), counting_steps(calls), log=lambda _: None)
    calls.clear()
    run_workflow(
        workflow(tmp_path, "packing:\n  materialize: never\n"), counting_steps(calls), log=lambda _: None
    )
    assert calls == []  # how the rows are held is not what they are
    run_workflow(workflow(tmp_path, "packing:\n  seq_len: 128\n"), counting_steps(calls), log=lambda _: None)
    assert calls == ["pretrain", "sft", "evaluate"]  # ingest does not read the packing
    calls.clear()
    run_workflow(workflow(tmp_path, "data:\n  seed: 3\n"), counting_steps(calls), log=lambda _: None)
    assert calls == ["ingest", "pretrain", "sft", "evaluate"]


def test_a_sweep_reruns_exactly_the_steps_that_read_its_keys(tmp_path):
    calls: list[str] = []
    run_workflow(workflow(tmp_path), counting_steps(calls), log=lambda _: None)
    calls.clear()
    run_workflow(
        workflow(tmp_path, "sweep:\n  sft.lr: [0.001, 0.0005]\n"), counting_steps(calls), log=lambda _: None
    )
    assert calls == ["sft", "evaluate"]  # the sweep touches no key that ingest or pre-training reads
    calls.clear()
    sweep = "sweep:\n  sft.lr: [0.001, 0.0005]\n  data.mixture.captions: [0.5, 0.7]\n"
    run_workflow(workflow(tmp_path, sweep), counting_steps(calls), log=lambda _: None)
    assert calls == ["ingest", "pretrain", "sft", "evaluate"]


def test_from_forces_a_step_and_its_successors(tmp_path):
    calls: list[str] = []
    run_workflow(workflow(tmp_path), counting_steps(calls), log=lambda _: None)
    calls.clear()
    run_workflow(workflow(tmp_path), counting_steps(calls), from_step="pretrain", log=lambda _: None)
    assert calls == ["pretrain", "sft", "evaluate"]
    with pytest.raises(ValueError, match="not a step"):
        run_workflow(workflow(tmp_path), counting_steps(calls), from_step="train", log=lambda _: None)


def test_a_failed_step_is_recorded_and_rerun(tmp_path):
    calls: list[str] = []
    steps = counting_steps(calls)

    def boom(ctx):
        raise RuntimeError("disk full")

    broken = [*steps[:2], Step("sft", ("pretrain",), ("sft",), boom), steps[3]]
    with pytest.raises(StepFailed, match="disk full"):
        run_workflow(workflow(tmp_path), broken, log=lambda _: None)
    rows = {
        r["step"]: r
        for r in step_states(RunDir(str(tmp_path), "t"), ["ingest", "pretrain", "sft", "evaluate"])
    }
    assert rows["pretrain"]["status"] == "done" and rows["sft"]["status"] == "failed"
    assert "disk full" in rows["sft"]["error"] and rows["evaluate"]["status"] == "pending"
    calls.clear()
    run_workflow(workflow(tmp_path), steps, log=lambda _: None)
    assert calls == ["sft", "evaluate"]


def test_manifest_records_fingerprint_inputs_and_wall_time(tmp_path):
    manifests = run_workflow(workflow(tmp_path), counting_steps([]), log=lambda _: None)
    sft = manifests["sft"]
    assert sft["upstream"] == {"pretrain": manifests["pretrain"]["fingerprint"]}
    assert sft["duration_s"] >= 0 and sft["outputs"]["file"].endswith("sft/artifact.txt")
    assert (tmp_path / "t" / "workflow.yaml").read_text().startswith("name: t")
