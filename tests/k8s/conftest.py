"""Fixtures for the Kubernetes tests: sample workflows and a stand-in API server."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

import pytest
from k8s_apiserver import ApiState, Handler
from k8s_workflows import GPU_CLUSTER, make_workflow

from mm1.config import Workflow


@pytest.fixture
def cpu_workflow() -> tuple[Workflow, str]:
    return make_workflow()


@pytest.fixture
def gpu_workflow() -> tuple[Workflow, str]:
    deploy = """
  gpus_per_replica: 1
  model_name: mm1-3b-chat
  api_key_env: MM1_API_KEY
  autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 4}
"""
    return make_workflow(
        name="MM1_3B paper recipe", root="s3://bucket/mm1-runs", cluster=GPU_CLUSTER, deploy=deploy
    )


@pytest.fixture
def api_server(monkeypatch, tmp_path):
    """(state, api_client) for a fresh stand-in; discovery caches go to tmp_path."""
    import tempfile

    from kubernetes import client

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    state = ApiState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    api_client = client.ApiClient(configuration)
    yield state, api_client
    server.shutdown()
    server.server_close()
