"""docker-compose.yml: valid against the Compose spec, and wired the way the Ray cluster needs it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from mm1.config import ClusterConfig
from mm1.k8s.schemas import compose_spec

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
RAY_SERVICES = ("ray-head", "ray-worker")
TOKEN = "0123456789abcdef" * 4
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(node, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution (enough for our file)."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op in (":?", "?") and not value:
            raise KeyError(f"{name}: {arg}")
        if op in (":-", "-") and not value:
            return arg
        return value or ""

    return VARIABLE.sub(substitute, node)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def schema_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(compose_spec())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_validates_against_the_compose_spec(compose):
    assert schema_errors(compose) == []
    resolved = interpolate(compose, {"RAY_AUTH_TOKEN": TOKEN, "RAY_WORKERS": "3"})
    assert schema_errors(resolved) == []
    assert resolved["services"]["ray-worker"]["deploy"]["replicas"] == "3"


def test_the_spec_would_catch_a_mistake(compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["ray-head"]["portz"] = ["8265:8265"]
    assert any("portz" in e for e in schema_errors(broken))


def test_token_comes_from_the_environment_and_is_required(compose):
    for name in RAY_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert VARIABLE.fullmatch(env["RAY_AUTH_TOKEN"])["name"] == "RAY_AUTH_TOKEN"
    with pytest.raises(KeyError, match="RAY_AUTH_TOKEN"):
        interpolate(compose, {})
    # No literal that looks like a credential anywhere in the file.
    text = COMPOSE.read_text()
    assert not re.search(r"(?i)(token|password|secret|key)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{16,}", text)
    assert not re.search(r"\b[0-9a-f]{32,}\b", text)


def test_every_ray_node_starts_serve_behind_haproxy_unless_told_otherwise(compose):
    for env_file, flag in (({}, "1"), ({"RAY_SERVE_ENABLE_HA_PROXY": "0"}, "0")):
        resolved = interpolate(compose, {"RAY_AUTH_TOKEN": "t", **env_file})
        for name in RAY_SERVICES:
            assert resolved["services"][name]["environment"]["RAY_SERVE_ENABLE_HA_PROXY"] == flag


def test_head_starts_ray_with_dashboard_serve_client_and_metrics(compose):
    head = compose["services"]["ray-head"]
    command = head["command"].split()
    assert command[:3] == ["ray", "start", "--head"] and "--block" in command
    assert "--dashboard-host=0.0.0.0" in command and "--dashboard-port=8265" in command
    assert "--ray-client-server-port=10001" in command and "--metrics-export-port=8080" in command
    published = {p.rsplit(":", 1)[-1] for p in interpolate(head["ports"], {})}
    assert published == {"8265", "8000", "10001"}
    assert all(p.startswith("127.0.0.1:") for p in interpolate(head["ports"], {}))  # local by default
    assert "gcs_healthz" in " ".join(head["healthcheck"]["test"])


def test_workers_join_the_head_and_scale(compose):
    worker = compose["services"]["ray-worker"]
    command = worker["command"].split()
    assert "--address=ray-head:6379" in command and "--block" in command
    assert compose["services"]["ray-head"]["hostname"] == "ray-head"
    assert worker["deploy"]["replicas"] == "${RAY_WORKERS:-1}"
    # --scale needs workers without fixed names or published ports.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert worker["image"] == compose["services"]["ray-head"]["image"]


def mounts(service: dict) -> dict[str, str]:
    """Named volume (or ./path) -> mount point."""
    return {v.split(":")[0]: v.split(":")[1] for v in service.get("volumes", [])}


def test_runs_live_on_one_named_volume_in_head_and_workers(compose):
    head, worker = (mounts(compose["services"][s]) for s in RAY_SERVICES)
    assert head["runs"] == worker["runs"] == ClusterConfig().storage_mount
    assert "runs" in compose["volumes"]


def test_prometheus_reads_rays_service_discovery_file_from_the_heads_session(compose):
    prometheus = compose["services"]["prometheus"]
    volumes = mounts(prometheus)
    config_path = ROOT / volumes["./deploy/prometheus/prometheus.yml"].replace(
        "/etc/prometheus/prometheus.yml", "deploy/prometheus/prometheus.yml"
    )
    config = yaml.safe_load(config_path.read_text())
    (sd_file,) = config["scrape_configs"][0]["file_sd_configs"][0]["files"]
    head_tmp = mounts(compose["services"]["ray-head"])["ray-tmp"]
    assert volumes["ray-tmp"] == head_tmp == "/tmp/ray"
    # Ray writes <temp dir>/session_latest/prom_metrics_service_discovery.json (ray_constants).
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    assert sd_file == f"{head_tmp}/session_latest/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"


def test_grafana_provisions_rays_dashboards_and_the_prometheus_source(compose):
    grafana = compose["services"]["grafana"]
    volumes = mounts(grafana)
    provisioning = ROOT / "deploy/grafana/provisioning"
    assert volumes["./deploy/grafana/provisioning"] == grafana["environment"]["GF_PATHS_PROVISIONING"]
    (provider,) = yaml.safe_load((provisioning / "dashboards/ray.yml").read_text())["providers"]
    assert volumes["ray-tmp"] == "/tmp/ray"
    assert provider["options"]["path"] == "/tmp/ray/session_latest/metrics/grafana/dashboards"
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert source["name"] == "Prometheus"  # RAY_PROMETHEUS_NAME's default, used by Ray's dashboards
    assert source["url"] == "http://prometheus:9090"
    assert grafana["environment"]["GF_SECURITY_ALLOW_EMBEDDING"] == "true"


def test_ray_dashboard_is_wired_to_grafana_and_prometheus(compose):
    env = interpolate(compose["services"]["ray-head"]["environment"], {"RAY_AUTH_TOKEN": TOKEN})
    assert env["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090"
    assert env["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    assert env["RAY_GRAFANA_IFRAME_HOST"] == "http://localhost:3000"
    grafana_port = interpolate(compose["services"]["grafana"]["ports"], {})[0]
    assert grafana_port.endswith(":3000:3000")


def test_env_example_lists_every_variable_the_file_uses(compose):
    example = (ROOT / "deploy/compose.env.example").read_text()
    defined = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    used = {m["name"] for m in VARIABLE.finditer(COMPOSE.read_text())}
    assert "RAY_AUTH_TOKEN" in defined
    assert re.search(r"^RAY_AUTH_TOKEN=$", example, re.M)  # shipped empty
    assert used - defined <= {"PROMETHEUS_IMAGE", "GRAFANA_IMAGE"}


def _compose_cli() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_cli(), reason="the docker compose plugin is not installed")
def test_docker_compose_config_accepts_the_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text(f"RAY_AUTH_TOKEN={TOKEN}\n")
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
