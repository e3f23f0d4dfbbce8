"""`mm1 serve CHECKPOINT`: serves until told to stop, then removes its application."""

from __future__ import annotations

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
