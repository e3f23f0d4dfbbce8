"""Our own metrics, exported through `ray.util.metrics` so they reach Prometheus and the dashboard's charts.

`METRICS` is the one list of what we export (name, kind, tags); the record helpers below go through it, and the
Grafana panels (mm1/k8s/dashboards.py) are checked against it. Every name starts with `mm1_`; Prometheus sees
it as `exported_name(name)`: Ray prefixes application metrics with `ray_`, and counters get `_total`.

Metrics are created lazily, once per process, and recording is a no-op when Ray is not initialized (unit
tests, `mm1 validate`). Ray's metrics agent forgets a gauge two report intervals after its last `set` (Ray
2.60), so a daemon thread re-sets this process's gauges every half interval: a finished step's state or an
evaluation score stays visible while the process lives, and vanishes with it.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

STEP_STATES = {"pending": 0, "running": 1, "done": 2, "failed": 3, "skipped": 2}

TRAIN_TAGS = ("run", "stage", "candidate", "rank")
WORKFLOW_TAGS = ("workflow", "step")


@dataclass(frozen=True)
class MetricSpec:
    kind: Literal["gauge", "counter"]
    description: str
    tags: tuple[str, ...]


METRICS: dict[str, MetricSpec] = {
    "mm1_workflow_step_state": MetricSpec(
        "gauge", "0 pending, 1 running, 2 done or skipped, 3 failed", WORKFLOW_TAGS
    ),
    "mm1_workflow_step_seconds": MetricSpec("gauge", "wall time of the step's last run", WORKFLOW_TAGS),
    "mm1_train_step": MetricSpec("gauge", "optimizer steps done", TRAIN_TAGS),
    "mm1_train_loss": MetricSpec("gauge", "training loss per label token, over all workers", TRAIN_TAGS),
    "mm1_train_lr": MetricSpec("gauge", "learning rate of the last step", TRAIN_TAGS),
    "mm1_train_tokens_per_second": MetricSpec("gauge", "tokens per second, all workers", TRAIN_TAGS),
    "mm1_train_images_per_second": MetricSpec("gauge", "images per second, all workers", TRAIN_TAGS),
    "mm1_train_mfu": MetricSpec("gauge", "model FLOPs utilisation (0-1)", TRAIN_TAGS),
    "mm1_train_data_wait_fraction": MetricSpec(
        "gauge", "share of this worker's step time spent waiting for batches", TRAIN_TAGS
    ),
    "mm1_eval_score": MetricSpec(
        "gauge", "evaluation score of a candidate's checkpoint", ("workflow", "candidate", "metric")
    ),
    "mm1_serve_requests": MetricSpec("counter", "chat completion requests served", ("model", "status")),
}

# A training metric row's keys (mm1/train/loop.py) -> the gauge each one sets.
TRAIN_ROW_METRICS = {
    "step": "mm1_train_step",
    "loss": "mm1_train_loss",
    "lr": "mm1_train_lr",
    "tokens_per_s": "mm1_train_tokens_per_second",
    "images_per_s": "mm1_train_images_per_second",
    "mfu": "mm1_train_mfu",
    "data_wait_fraction": "mm1_train_data_wait_fraction",
}


def exported_name(name: str) -> str:
    """The name Prometheus scrapes from Ray's metrics agent."""
    return f"ray_{name}" + ("_total" if METRICS[name].kind == "counter" else "")


@functools.cache
def _metric(name: str) -> Any:
    from ray.util import metrics

    spec = METRICS[name]
    cls = {"gauge": metrics.Gauge, "counter": metrics.Counter}[spec.kind]
    return cls(name, description=spec.description, tag_keys=spec.tags)


# Last value of every gauge series this process set, re-set by the keeper thread: (name, tags) -> value.
_live: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_lock = threading.Lock()
_keeper: threading.Thread | None = None


def _record(name: str, value: float, tags: dict[str, str]) -> None:
    import ray

    if not ray.is_initialized():
        return
    metric = _metric(name)
    if METRICS[name].kind == "counter":
        metric.inc(value, tags=tags)
        return
    metric.set(value, tags=tags)
    with _lock:
        _live[(name, tuple(sorted(tags.items())))] = value
    _start_keeper()


def _start_keeper() -> None:
    global _keeper
    if _keeper is None or not _keeper.is_alive():
        _keeper = threading.Thread(target=_keep_gauges_alive, name="mm1-metrics-keeper", daemon=True)
        _keeper.start()


def _keep_gauges_alive() -> None:
    import ray

    interval = max(ray._config.metrics_report_interval_ms(), 1000) / 1000 / 2
    while True:
        time.sleep(interval)
        if not ray.is_initialized():  # shut down: what was set belonged to that session
            with _lock:
                _live.clear()
            continue
        with _lock:
            live = list(_live.items())
        for (name, tags), value in live:
            _metric(name).set(value, tags=dict(tags))


def step_state(workflow: str, step: str, state: str, duration_s: float | None = None) -> None:
    tags = {"workflow": workflow, "step": step}
    _record("mm1_workflow_step_state", STEP_STATES[state], tags)
    if duration_s is not None:
        _record("mm1_workflow_step_seconds", duration_s, tags)


def train_progress(run: str, stage: str, candidate: str, rank: int, row: dict[str, Any]) -> None:
    """One logged training step's figures, from each Ray Train worker (`rank` tells them apart)."""
    tags = {"run": run, "stage": stage, "candidate": candidate, "rank": str(rank)}
    for key, name in TRAIN_ROW_METRICS.items():
        value = row.get(key)
        if value is not None:  # MFU is None where the device's peak is unknown
            _record(name, float(value), tags)


def eval_score(workflow: str, candidate: str, metric: str, value: float) -> None:
    tags = {"workflow": workflow, "candidate": candidate, "metric": metric}
    _record("mm1_eval_score", value, tags)


def request_served(model: str, status: int) -> None:
    tags = {"model": model, "status": str(status)}
    _record("mm1_serve_requests", 1, tags)
