"""Shared fixtures: one Ray instance for the whole test session (ray.init costs ~13 s here)."""

from __future__ import annotations

import os
import tempfile

import pytest

# Keep Ray quiet and light on a 2-core machine; tests never need the usage-stats prompt.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# What the platform caches between runs (the best CPU peak probe) stays out of the user's home; set before
# any Ray starts, so training workers see it too.
os.environ.setdefault("MM1_CACHE_DIR", tempfile.mkdtemp(prefix="mm1-test-cache-"))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with more logical CPUs than cores, so Ray Data tasks can run beside training workers."""
    import ray

    from services.ingress import prepare_local_ray

    if not ray.is_initialized():
        prepare_local_ray("auto")  # Serve's ingress as users get it on this machine (HAProxy on Linux)
        ray.init(num_cpus=4, include_dashboard=False, namespace="mm1-tests", log_to_driver=True)
    yield ray
    ray.shutdown()
