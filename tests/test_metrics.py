"""Our metrics reach the node's Prometheus endpoint (what Prometheus scrapes and the dashboard charts), under
the names mm1.metrics says, and the Grafana panels of both dashboard sets query only those names.

(The training gauges, during a real fit: tests/train/test_telemetry.py.)
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from prometheus_scrape import Sample, metrics_port, scrape, select

from mm1 import metrics
from mm1.k8s import dashboards

ROOT = Path(__file__).resolve().parents[1]
GRAFANA_PROVISIONING = ROOT / "deploy/grafana/provisioning"
CONTAINER_PROVISIONING = "/etc/grafana/provisioning"  # where docker-compose mounts the folder above


def scrape_until(port: int, found: Callable[[list[Sample]], bool], timeout_s: float = 60) -> list[Sample]:
    deadline = time.monotonic() + timeout_s
    samples = scrape(port)
    while not found(samples) and time.monotonic() < deadline:
        time.sleep(1)
        samples = scrape(port)
    return samples


def test_step_state_eval_score_and_requests_are_exported(ray_session):
    metrics.step_state("metrics-test", "pretrain", "done", duration_s=12.5)
    metrics.eval_score("metrics-test", "base", "shapes-vqa/overall", 0.75)
    metrics.request_served("metrics-test-model", 200)
    names = {metrics.exported_name(n) for n in ("mm1_workflow_step_seconds", "mm1_eval_score")}
    served = metrics.exported_name("mm1_serve_requests")
    samples = scrape_until(
        metrics_port(),
        lambda s: names <= {x.name for x in s} and bool(select(s, served, model="metrics-test-model")),
    )
    ours = [s for s in samples if s.labels.get("workflow") == "metrics-test"]
    state = select(ours, "ray_mm1_workflow_step_state", step="pretrain")
    assert [s.value for s in state] == [2.0], ours
    assert [s.value for s in select(ours, "ray_mm1_workflow_step_seconds")] == [12.5], ours
    assert [s.value for s in select(ours, "ray_mm1_eval_score", metric="shapes-vqa/overall")] == [0.75], ours
    # A counter reaches Prometheus with `_total` appended; exported_name knows it.
    assert served == "ray_mm1_serve_requests_total"
    assert [s.value for s in select(samples, served, model="metrics-test-model", status="200")] == [1.0]


def test_a_gauge_set_once_outlives_rays_gauge_expiry(ray_session):
    """Ray's agent drops a gauge two report intervals after its last set; ours are re-set while we live."""
    import ray

    metrics.eval_score("metrics-expiry", "base", "m", 0.5)
    port = metrics_port()
    samples = scrape_until(port, lambda s: bool(select(s, "ray_mm1_eval_score", workflow="metrics-expiry")))
    assert select(samples, "ray_mm1_eval_score", workflow="metrics-expiry"), "never exported"
    interval_s = max(ray._config.metrics_report_interval_ms(), 1000) / 1000
    deadline = time.monotonic() + 4 * interval_s  # twice the agent's expiry
    while time.monotonic() < deadline:
        time.sleep(interval_s / 2)
        found = select(scrape(port), "ray_mm1_eval_score", workflow="metrics-expiry")
        assert [s.value for s in found] == [0.5], "the gauge expired from the metrics agent"


def test_recording_without_ray_is_a_no_op(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    created = metrics._metric.cache_info().currsize
    metrics.step_state("w", "ingest", "running")
    metrics.request_served("m", 200)
    metrics.train_progress("r", "pretrain", "c", 0, {"step": 1, "loss": 2.0})
    assert metrics._metric.cache_info().currsize == created  # no metric object made, nothing sent


def test_every_training_row_key_has_a_registered_gauge():
    for key, name in metrics.TRAIN_ROW_METRICS.items():
        spec = metrics.METRICS[name]
        assert spec.kind == "gauge" and spec.tags == metrics.TRAIN_TAGS, key
    assert set(metrics.TRAIN_ROW_METRICS) == {
        "step",
        "loss",
        "lr",
        "tokens_per_s",
        "images_per_s",
        "mfu",
        "data_wait_fraction",
    }


# ---- Grafana: the panels of both dashboard sets query what we export, and show all of it


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _mm1_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\bray_mm1_\w+", expr)}


def _k8s_dashboard() -> dict:
    text = (ROOT / dashboards.K8S_DASHBOARDS).read_text()
    (configmap,) = [d for d in yaml.safe_load_all(text) if d]
    return json.loads(configmap["data"][dashboards.OVERVIEW_FILE])


def _compose_dashboards() -> list[dict]:
    """Every dashboard file a provider under deploy/grafana/provisioning loads from this repository."""
    found = []
    for provider_file in sorted((GRAFANA_PROVISIONING / "dashboards").glob("*.yml")):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            path = provider["options"]["path"]
            if path.startswith(CONTAINER_PROVISIONING + "/"):
                folder = GRAFANA_PROVISIONING / path.removeprefix(CONTAINER_PROVISIONING + "/")
                found += [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    return found


def test_dashboard_panels_query_exactly_the_exported_mm1_metrics():
    exported = {metrics.exported_name(name) for name in metrics.METRICS}
    compose = _compose_dashboards()
    assert compose, "docker-compose's Grafana provisions no dashboard of ours"
    for dashboard in [_k8s_dashboard(), *compose]:
        queried = _mm1_names(_exprs(dashboard))
        assert queried <= exported, f"{dashboard['title']} queries what nobody exports: {queried - exported}"
        assert exported <= queried, f"{dashboard['title']} has no panel for {exported - queried}"
        rows = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
        assert {"Training (pre-training and SFT)", "Workflow steps", "Evaluation", "Serving"} <= rows


def test_training_panels_break_down_by_run_stage_and_candidate():
    training = [p for _, panels in dashboards.OVERVIEW_ROWS for p in panels if "ray_mm1_train_" in p.expr]
    assert len(training) == len(metrics.TRAIN_ROW_METRICS)
    for panel in training:
        assert "by (run, stage, candidate" in panel.expr, panel
        assert 'run=~"$run"' in panel.expr, panel


def test_checked_in_dashboards_are_generated_from_mm1_k8s_dashboards():
    for relative, text in dashboards.checked_in_files().items():
        assert (ROOT / relative).read_text() == text, (
            f"stale {relative}: python -m mm1.k8s.dashboards --write"
        )
