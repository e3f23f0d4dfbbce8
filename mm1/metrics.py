"""Our own metrics, exported through `ray.util.metrics` so they reach Prometheus and the dashboard's charts.

Every name starts with `mm1_` (Ray prefixes application metrics with `ray_` on export). Metrics are created
lazily, once per process, and recording is a no-op when Ray is not initialized (unit tests, `mm1 validate`).
"""

from __future__ import annotations

import functools
from typing import Any

STEP_STATES = {"pending": 0, "running": 1, "done": 2, "failed": 3, "skipped": 2}


@functools.cache
def _metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...]) -> Any:
    from ray.util import metrics

    cls = {"gauge": metrics.Gauge, "counter": metrics.Counter}[kind]
    return cls(name, description=description, tag_keys=tag_keys)


def _record(kind: str, name: str, description: str, value: float, tags: dict[str, str]) -> None:
    import ray

    if not ray.is_initialized():
        return
    metric = _metric(kind, name, description, tuple(sorted(tags)))
    if kind == "counter":
        metric.inc(value, tags=tags)
    else:
        metric.set(value, tags=tags)


def step_state(workflow: str, step: str, state: str, duration_s: float | None = None) -> None:
    tags = {"workflow": workflow, "step": step}
    _record(
        "gauge",
        "mm1_workflow_step_state",
        "0 pending, 1 running, 2 done or skipped, 3 failed",
        STEP_STATES[state],
        tags,
    )
    if duration_s is not None:
        _record("gauge", "mm1_workflow_step_seconds", "wall time of the step's last run", duration_s, tags)


def train_progress(run: str, stage: str, row: dict[str, float]) -> None:
    """One training step's figures (called by rank 0 of each Ray Train run)."""
    tags = {"run": run, "stage": stage}
    _record("gauge", "mm1_train_step", "optimizer steps done", row["step"], tags)
    _record("gauge", "mm1_train_loss", "training loss", row["loss"], tags)
    _record("gauge", "mm1_train_tokens_per_second", "training throughput", row["tokens_per_s"], tags)
    if "mfu" in row:
        _record("gauge", "mm1_train_mfu", "model FLOPs utilisation", row["mfu"], tags)


def eval_score(workflow: str, candidate: str, metric: str, value: float) -> None:
    tags = {"workflow": workflow, "candidate": candidate, "metric": metric}
    _record("gauge", "mm1_eval_score", "evaluation score of a candidate's checkpoint", value, tags)


def request_served(model: str, status: int) -> None:
    tags = {"model": model, "status": str(status)}
    _record("counter", "mm1_serve_requests", "chat completion requests served", 1, tags)
