"""Fault tolerance of the Ray Train loop, on real Ray Train fits of a tiny model (3 fits, ~2-3 min here).

- A training worker killed with SIGKILL mid-run: Ray Train restarts the worker group, the loop resumes from
  the last registered checkpoint, and the run ends at the configured step with one row per step.
- A finished run restarted with more steps (same name and storage): training continues from the saved step
  with the optimizer state, schedule and data position carried over.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from train_helpers import SEQ_LEN

from mm1.config import TrainConfig
from mm1.train.checkpoint import OPTIMIZER_FILE
from mm1.train.launch import StageOutcome, fit_stage
from mm1.train.schedule import warmup_cosine

pytestmark = pytest.mark.e2e
LR = 1e-3


def _fit(ingested, storage: Path, run_name: str, stage: TrainConfig, metrics: Path) -> StageOutcome:
    return fit_stage(
        stage_name="pretrain",
        stage=stage,
        label=run_name,
        run_name=run_name,
        storage_path=str(storage),
        dataset=ingested.dataset(),
        model_cfg=ingested.model_cfg,
        tokenizer_dir=ingested.tokenizer_dir,
        seq_len=SEQ_LEN,
        metrics_path=str(metrics),
    )


def _steps(history: list[dict]) -> list[int]:
    return [row["step"] for row in history]


def _train_worker_pids() -> list[int]:
    """PIDs of this job's live Ray Train workers, from the GCS actor table. (`ray.util.state.list_actors`
    needs the dashboard, which the session's Ray leaves off; and its default address, 127.0.0.1:8265, may
    be another Ray on this machine, whose workers must not be touched.)"""
    import ray
    from ray._private.state import actors

    job = ray.get_runtime_context().get_job_id()
    return [
        a["Pid"]
        for a in actors().values()
        if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE" and a["JobID"] == job
    ]


def _registered(run_dir: Path, step: int) -> bool:
    """True once Ray Train's controller has registered the checkpoint of `step` (it rewrites this snapshot
    after each registration). A checkpoint folder alone is not enough: a worker killed before the controller
    heard of it would restart from the previous checkpoint."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    return snapshot.exists() and f"checkpoint_{step:06d}" in snapshot.read_text()


def test_killed_worker_resumes_from_last_checkpoint(ingested, tmp_path, ray_session):
    stage = TrainConfig(
        steps=40,
        batch_size=4,  # 2 workers x micro-batch 2; 40 steps = 160 sequences, more than one pass over the data
        lr=LR,
        warmup_steps=2,
        checkpoint_every=5,
        log_every=5,
        num_workers=2,
        cpus_per_worker=1,
        max_failures=2,
    )
    metrics = tmp_path / "metrics.jsonl"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = _fit(ingested, tmp_path / "ray", "killed", stage, metrics)
        except BaseException as exc:  # surfaced by the main thread
            outcome["error"] = exc

    fit = threading.Thread(target=run, daemon=True)
    fit.start()
    run_dir = tmp_path / "ray" / "killed"
    deadline = time.monotonic() + 300
    pids: list[int] = []
    while not (_registered(run_dir, 5) and len(pids) == 2):
        assert fit.is_alive(), f"the fit ended before a worker was killed: {outcome}"
        assert time.monotonic() < deadline, "no registered checkpoint at step 5 in time"
        pids = _train_worker_pids()
        time.sleep(0.2)
    os.kill(pids[-1], signal.SIGKILL)
    killed_at = max(_steps(json.loads(line) for line in metrics.read_text().splitlines()))
    fit.join(600)
    assert not fit.is_alive(), "the fit did not finish after the worker was killed"
    if "error" in outcome:
        raise outcome["error"]
    result: StageOutcome = outcome["result"]
    assert killed_at < stage.steps, "the worker must die mid-run for this test to mean anything"

    history = result.history
    assert _steps(history) == list(range(1, 41)), "steps continue after the failure, without gaps or repeats"
    resumed = [row for row in history if "resumed_from" in row]
    assert len(resumed) == 1, resumed
    row = resumed[0]
    assert 5 <= row["resumed_from"] <= killed_at and row["resumed_from"] % 5 == 0
    assert row["step"] == row["resumed_from"] + 1
    # Each worker skips what the run had consumed: resumed_from steps x 4 sequences / (2 workers x 2).
    assert row["skipped_microbatches"] == row["resumed_from"]
    assert result.checkpoints[-1]["step"] == 40
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == history
    assert all(r["workers"] == 2 for r in history)


def test_finished_run_continues_with_more_steps(ingested, tmp_path, ray_session):
    common = dict(
        batch_size=4, grad_accum=2, lr=LR, warmup_steps=2, checkpoint_every=3, log_every=3, max_failures=0
    )
    metrics = tmp_path / "metrics.jsonl"
    first = _fit(ingested, tmp_path / "ray", "continued", TrainConfig(steps=6, **common), metrics)
    assert _steps(first.history) == list(range(1, 7)) and first.checkpoints[-1]["step"] == 6
    assert "resumed_from" not in json.dumps(first.history)

    second = _fit(ingested, tmp_path / "ray", "continued", TrainConfig(steps=10, **common), metrics)
    history = second.history
    assert _steps(history) == list(range(1, 11))
    assert history[:6] == first.history, "the first run's rows are kept as they were"
    new = history[6]
    assert new["resumed_from"] == 6 and new["step"] == 7
    assert new["skipped_microbatches"] == 12  # 6 steps x 4 sequences / micro-batches of 2
    # The cosine is stretched over the new total from the first continued step on, ending at 10% of the peak.
    assert new["lr"] == pytest.approx(LR * warmup_cosine(6, 2, 10, 0.1))
    assert history[-1]["lr"] == pytest.approx(0.1 * LR)

    final = Path(second.checkpoints[-1]["uri"]).parent
    optimizer = torch.load(final / OPTIMIZER_FILE, weights_only=False)["state"]
    llm = {name: s for name, s in optimizer.items() if name.startswith("language_model.")}
    assert llm and {float(s["step"]) for s in llm.values()} == {10.0}, "AdamW's step counts all 10 steps"
