"""The runner with its run folder in a bucket (the session's real S3 server): manifests, outputs and the
driver's files land in the bucket, and a driver on another machine (a fresh staging disk) skips what finished."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mm1 import storage
from mm1.config import loads
from mm1.workflow.runner import Step, StepResult, run_workflow

ROOT = Path(__file__).resolve().parents[2]


def steps(calls: list[str]) -> list[Step]:
    def make(name: str):
        def run(ctx):
            calls.append(name)
            (ctx.out / "artifact.txt").write_text(name)  # the driver's own file: uploaded when the step ends
            storage.write_text(storage.join(ctx.out_uri, "from-a-task.txt"), name)  # as a Ray task would
            return StepResult(outputs={"file": storage.join(ctx.out_uri, "artifact.txt")})

        return run

    return [
        Step("ingest", (), ("data",), make("ingest")),
        Step("pretrain", ("ingest",), ("model",), make("pretrain")),
    ]


def test_a_run_folder_in_a_bucket_resumes_from_another_driver(s3_bucket, tmp_path, monkeypatch):
    wf = loads(f"name: t\nstorage:\n  root: {s3_bucket}/runs\n")
    calls: list[str] = []
    monkeypatch.setenv("MM1_STAGING_DIR", str(tmp_path / "first-driver"))
    run_workflow(wf, steps(calls), log=lambda _: None)
    run = f"{s3_bucket}/runs/t"
    manifest = json.loads(storage.read_text(f"{run}/pretrain/manifest.json"))
    assert manifest["status"] == "done" and storage.read_text(manifest["outputs"]["file"]) == "pretrain"
    assert storage.read_text(f"{run}/ingest/from-a-task.txt") == "ingest"
    assert "name: t" in storage.read_text(f"{run}/workflow.yaml")

    monkeypatch.setenv("MM1_STAGING_DIR", str(tmp_path / "second-driver"))  # another machine's disk
    logs: list[str] = []
    run_workflow(wf, steps(calls), log=logs.append)
    assert calls == ["ingest", "pretrain"] and sum("skipped" in line for line in logs) == 2

    status = subprocess.run(
        [sys.executable, "-m", "mm1.cli", "status", run],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert f"run {run}" in status.stdout
    assert [line.split()[:2] for line in status.stdout.splitlines()[2:4]] == [
        ["ingest", "done"],
        ["pretrain", "done"],
    ]


def test_a_rerun_empties_the_steps_folder_in_the_bucket(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MM1_STAGING_DIR", str(tmp_path / "driver"))
    calls: list[str] = []
    run_workflow(loads(f"name: t\nstorage:\n  root: {s3_bucket}\n"), steps(calls), log=lambda _: None)
    storage.write_text(f"{s3_bucket}/t/ingest/stale.txt", "left by an older run")
    run_workflow(
        loads(f"name: t\nstorage:\n  root: {s3_bucket}\ndata:\n  seed: 9\n"), steps(calls), log=lambda _: None
    )
    assert calls == ["ingest", "pretrain", "ingest", "pretrain"]
    assert not storage.exists(f"{s3_bucket}/t/ingest/stale.txt")
