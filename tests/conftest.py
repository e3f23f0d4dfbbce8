"""Shared fixtures: one Ray instance for the whole test session (ray.init costs ~13 s here)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
from s3_server import S3Server, start_s3_server

# Keep Ray quiet and light on a 2-core machine; tests never need the usage-stats prompt.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray's metrics agent takes gauges every report interval (10 s by default) and forgets them after two:
# 2 s lets the metrics tests see values move during a short fit.
os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
# What the platform caches between runs (the best CPU peak probe) stays out of the user's home; set before
# any Ray starts, so training workers see it too.
if "MM1_CACHE_DIR" not in os.environ:
    _TEST_CACHE = tempfile.mkdtemp(prefix="mm1-test-cache-")
    os.environ["MM1_CACHE_DIR"] = _TEST_CACHE
    # Removed when this process ends (each session used to leave its folder in /tmp).
    atexit.register(shutil.rmtree, _TEST_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """One S3-compatible server per session; its variables are set in this process's environment (before
    the session's Ray starts, so Ray's workers reach it too), as a user would export them for AWS or MinIO."""
    proc, server = start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh bucket of the session's S3 server (s3://name)."""
    return s3_server.new_bucket()


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """A local Ray with more logical CPUs than cores, so Ray Data tasks can run beside training workers.
    It starts after the S3 server, so its workers inherit the S3 variables."""
    import ray

    from services.ingress import prepare_local_ray

    if not ray.is_initialized():
        prepare_local_ray("auto")  # Serve's ingress as users get it on this machine (HAProxy on Linux)
        ray.init(num_cpus=4, include_dashboard=False, namespace="mm1-tests", log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory):
    """Tiny real Hugging Face checkpoints built offline (tests/pretrained_fixtures.py): siglip/, clip/ (vision
    towers with their image-processor configs), llama/, qwen2/ (causal LMs with their tokenizers and chat
    templates)."""
    from pretrained_fixtures import build_pretrained

    return build_pretrained(tmp_path_factory.mktemp("pretrained"))
