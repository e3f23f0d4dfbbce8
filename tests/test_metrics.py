"""Our metrics reach the node's Prometheus endpoint (what Prometheus scrapes and the dashboard charts)."""

from __future__ import annotations

import time
import urllib.request

from mm1 import metrics


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_step_state_and_eval_score_are_exported(ray_session):
    metrics.step_state("metrics-test", "pretrain", "done", duration_s=12.5)
    metrics.eval_score("metrics-test", "base", "shapes-vqa/overall", 0.75)
    port = ray_session.nodes()[0]["MetricsExportPort"]
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = scrape(port)
        if "mm1_eval_score" in text and "mm1_workflow_step_seconds" in text:
            break
        time.sleep(2)
    lines = [line for line in text.splitlines() if 'workflow="metrics-test"' in line]
    assert any("mm1_workflow_step_state" in line and line.endswith(" 2.0") for line in lines), lines
    assert any("mm1_workflow_step_seconds" in line and line.endswith(" 12.5") for line in lines), lines
    assert any("mm1_eval_score" in line and 'metric="shapes-vqa/overall"' in line for line in lines), lines


def test_recording_without_ray_is_a_no_op(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    created = metrics._metric.cache_info().currsize
    metrics.step_state("w", "ingest", "running")
    metrics.request_served("m", 200)
    assert metrics._metric.cache_info().currsize == created  # no metric object made, nothing sent
