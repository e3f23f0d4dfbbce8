"""Serve settings from a workflow's deploy section or builder args, and the deployment options they give."""

from __future__ import annotations

import pytest

from mm1.config import loads
from services.openai_app import deployment_options
from services.settings import ServeSettings


def test_builder_args_round_trip_and_reject_typos():
    settings = ServeSettings(
        checkpoint="/ck", model_name="m", allowed_image_hosts=("a.org",), max_batch_size=8
    )
    assert ServeSettings.from_args(settings.to_args()) == settings
    with pytest.raises(ValueError, match="max_batch_sise"):
        ServeSettings.from_args({"checkpoint": "/ck", "max_batch_sise": 8})
    with pytest.raises(ValueError, match="checkpoint"):
        ServeSettings.from_args({"model_name": "m", "checkpoint": ""})
    with pytest.raises(ValueError, match="stream_interval_s must be >= 0 seconds, got -1"):
        ServeSettings.from_args({"checkpoint": "/ck", "stream_interval_s": -1})


def test_from_deploy_section():
    wf = loads(
        """
name: wf
deploy:
  gpus_per_replica: 0.5
  max_batch_size: 32
  batch_wait_timeout_s: 0.02
  stream_interval_s: 0.05
  api_key_env: MY_KEY
  allowed_image_hosts: [images.example.org]
  autoscaling: {min_replicas: 1, max_replicas: 3, target_ongoing_requests: 4}
"""
    )
    s = ServeSettings.from_deploy(wf.deploy, "/ck", "wf")
    assert (s.max_batch_size, s.batch_wait_timeout_s, s.api_key_env) == (32, 0.02, "MY_KEY")
    assert s.allowed_image_hosts == ("images.example.org",)
    assert s.stream_interval_s == 0.05
    assert s.torch_device == "cuda"
    options = deployment_options(s)
    assert options["ray_actor_options"]["num_gpus"] == 0.5
    assert "runtime_env" not in options["ray_actor_options"]
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 4,
    }
    assert "num_replicas" not in options
    assert options["max_ongoing_requests"] >= 32  # a full batch decoding while the next one fills


def test_cpu_replicas_ask_for_no_gpu():
    options = deployment_options(ServeSettings(checkpoint="/ck", num_replicas=2))
    assert options["num_replicas"] == 2
    assert "num_gpus" not in options["ray_actor_options"]
    assert ServeSettings(checkpoint="/ck").torch_device == "cpu"
    # OpenMP threads that sleep while they wait: they share the cores with the replica's event loop
    assert options["ray_actor_options"]["runtime_env"] == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}


def test_the_builder_passes_a_digest_of_the_api_key_never_the_key(monkeypatch):
    from services.api import key_digest
    from services.openai_app import build_app

    monkeypatch.setenv("SOME_KEY", "s3cret")
    app = build_app({"checkpoint": "/ck", "api_key_env": "SOME_KEY"})
    bound = app._bound_deployment  # what Serve stores: options and init arguments
    assert bound.init_args[1] == key_digest("s3cret")
    assert "s3cret" not in repr(bound.init_args) + repr(bound.ray_actor_options)
    monkeypatch.delenv("SOME_KEY")
    assert build_app({"checkpoint": "/ck", "api_key_env": "SOME_KEY"})._bound_deployment.init_args[1] is None


def test_serve_settings_share_the_deploy_sections_options_and_rules():
    """One serving schema: every serving option of the deploy section reaches the replica, checked once."""
    import dataclasses

    from mm1.config import DeployConfig, ServingOptions

    assert issubclass(ServeSettings, ServingOptions) and issubclass(DeployConfig, ServingOptions)
    wf = loads("name: wf\ndeploy:\n  max_images: 2\n  image_dir: /imgs\n  image_fetch_timeout_s: 1.5\n")
    settings = ServeSettings.from_deploy(wf.deploy, "/ck", "wf")
    for option in dataclasses.fields(ServingOptions):
        expected = "wf" if option.name == "model_name" else getattr(wf.deploy, option.name)
        assert getattr(settings, option.name) == (
            tuple(expected) if option.name == "allowed_image_hosts" else expected
        )
    # The same rule, the same words, whichever way the settings arrive.
    with pytest.raises(ValueError, match="max_image_bytes must be at least 1, got 0"):
        ServeSettings.from_args({"checkpoint": "/ck", "max_image_bytes": 0})
    with pytest.raises(ValueError, match="deploy.max_image_bytes: must be at least 1, got 0"):
        loads("name: wf\ndeploy:\n  max_image_bytes: 0\n")
    with pytest.raises(ValueError, match=r"unknown autoscaling key\(s\) \['max'\]"):
        ServeSettings.from_args({"checkpoint": "/ck", "autoscaling": {"max": 3}})
