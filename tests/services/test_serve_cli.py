"""`mm1 serve CHECKPOINT`: serves until told to stop, then removes its application."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import httpx
from conftest import SERVE_HOST

from services.deploy import serve_checkpoint, wait_healthy


def test_serve_checkpoint_serves_until_stopped(ray_session, serve_port, tiny_checkpoint):
    from ray import serve

    stop = threading.Event()
    thread = threading.Thread(
        target=serve_checkpoint,
        args=(tiny_checkpoint, SERVE_HOST, serve_port, "cli-model"),
        kwargs={"stop": stop},
    )
    thread.start()
    base = f"http://{SERVE_HOST}:{serve_port}"
    try:
        wait_healthy(base, timeout_s=120)
        models = httpx.get(f"{base}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["cli-model"]
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert "cli-model" not in serve.status().applications
    serve.shutdown()


def test_serve_with_an_ingress_this_machine_lacks_is_one_clear_error(tmp_path):
    """Refused before any Ray starts: exit 2 and a line that says what to do, no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_SERVE_ENABLE_HA_PROXY"}
    env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(tmp_path / "no-haproxy")
    env.pop("RAY_ADDRESS", None)
    (tmp_path / "config.json").write_text("{}")  # passes the checkpoint check; the ingress is refused first
    result = subprocess.run(
        [sys.executable, "-m", "mm1.cli", "serve", str(tmp_path), "--ingress", "haproxy"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: deploy.ingress is 'haproxy' but no HAProxy binary was found")
    assert "Traceback" not in result.stderr
