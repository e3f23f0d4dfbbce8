"""End to end: the quick start (reduced) runs every step on a real Ray, serves the winner, skips on rerun,
and resumes pre-training from its last checkpoint after the driver is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from quickstart_overrides import QUICKSTART, REDUCED

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_quickstart_end_to_end_then_rerun_skips(tmp_path, ray_session):
    from mm1.config import load
    from mm1.workflow.local import run_local

    port = free_port()
    overrides = [*REDUCED, f"storage.root={tmp_path}", f"deploy.port={port}"]
    wf = load(QUICKSTART, overrides)
    logs: list[str] = []
    manifests = run_local(wf, log=logs.append)
    assert set(manifests) == {"ingest", "pretrain", "sft", "evaluate", "select", "deploy", "report"}

    pretrain = manifests["pretrain"]["outputs"]["runs"]  # one run per candidate: the sweep is over the model
    assert set(pretrain) == {"connector.type-avgpool", "connector.type-c-abstractor"}
    for entry in pretrain.values():
        steps = [json.loads(line)["step"] for line in Path(entry["metrics"]).read_text().splitlines()]
        assert steps == list(range(1, 7))
        assert entry["checkpoints"][-1]["step"] == 6

    winner = manifests["select"]["outputs"]["winner"]
    assert winner["candidate"] in pretrain and winner["metric"] == "shapes-vqa/overall"
    sample = manifests["deploy"]["outputs"]["sample"]
    assert sample["answer"] is not None and sample["question"]
    assert manifests["deploy"]["outputs"]["url"] == f"http://127.0.0.1:{port}/v1"
    assert Path(manifests["report"]["outputs"]["html"]).exists()
    assert any(line.startswith("winner: ") for line in logs)

    # The rerun skips every finished step; deploy always serves again.
    logs.clear()
    t0 = time.perf_counter()
    run_local(wf, log=logs.append)
    rerun_s = time.perf_counter() - t0
    skipped = [line for line in logs if "skipped: unchanged" in line]
    assert len(skipped) == 6, logs
    print(f"rerun wall time without Ray start-up: {rerun_s:.1f} s")

    # Changing only sft reruns sft and what follows, not ingest or pretrain.
    logs.clear()
    run_local(load(QUICKSTART, [*overrides, "sft.lr=0.002"]), log=logs.append)
    assert any(line.startswith("[ingest] skipped") for line in logs)
    assert any(line.startswith("[pretrain] skipped") for line in logs)
    assert any(line.startswith("[sft] running (config or inputs changed)") for line in logs)


def _run_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mm1.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.e2e
def test_killed_driver_resumes_pretraining_from_its_last_checkpoint(tmp_path):
    """SIGKILL the `mm1 run` driver mid pre-training; the same command resumes from the last checkpoint."""
    overrides = [
        *REDUCED,
        f"storage.root={tmp_path}",
        "sweep={}",
        "pretrain.steps=40",
        "pretrain.checkpoint_every=5",
        "pretrain.log_every=5",
        f"cluster.dashboard_port={free_port()}",
    ]
    args = ["run", str(QUICKSTART), *overrides, "--until", "pretrain"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_dir = tmp_path / "quickstart" / "pretrain" / "ray"
    first = _run_cli(args, env, tmp_path / "first.log")
    deadline = time.monotonic() + 420
    try:
        # A checkpoint's folder appears before Ray Train has registered it (a kill right then resumes from the
        # one before); once the folder of step 20 appears, the checkpoint of step 10 is surely registered.
        while not list(run_dir.glob("*/checkpoint_000020")):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step 20 in time"
            time.sleep(0.5)
        os.kill(first.pid, signal.SIGKILL)  # the driver only, as a user's `kill -9 PID`
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    time.sleep(3)  # let the orphaned local Ray notice its driver is gone

    second = _run_cli(args, env, tmp_path / "second.log")
    assert second.wait(600) == 0, (tmp_path / "second.log").read_text()[-4000:]
    log = (tmp_path / "second.log").read_text()
    assert "[ingest] skipped" in log
    assert "resumed at step" in log and "from scratch" not in log
    resumed_at = int(log.split("resumed at step ")[1].split(";")[0])
    assert resumed_at >= 10
    metrics = tmp_path / "quickstart" / "pretrain" / "metrics" / "base.jsonl"
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 41)), "the logged steps continue without restarting or repeating"
