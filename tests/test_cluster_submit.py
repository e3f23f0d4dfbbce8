"""A real two-node Ray cluster on this machine (token auth on), a reduced quick start submitted with
`mm1 submit`, and its success checked through the dashboard's REST API, training on both nodes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from quickstart_overrides import QUICKSTART, REDUCED

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """n distinct ports free right now (held open together so that none is handed out twice)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def node_ports() -> list[str]:
    names = [
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "dashboard-agent-grpc-port",
    ]
    return [f"--{name}={port}" for name, port in zip(names, free_ports(len(names)), strict=True)]


def start_node(command: list[str], env: dict[str, str], marker: str, attempts: int = 3) -> None:
    """`ray start` with ports picked just before it runs. A port free when picked can be taken by the
    time a daemon binds it (the head's own processes open connections from the same range), so a failed
    start is cleaned up and retried with fresh ports; the last failure is shown with Ray's own output."""
    for attempt in range(1, attempts + 1):
        proc = subprocess.run([*command, *node_ports()], env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            return
        kill_cluster(marker)
        if attempt == attempts:
            raise AssertionError(
                f"`ray start` failed {attempts} times; last output:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            found += [child, *_children(child)]
    return found


def kill_cluster(marker: str) -> None:
    """Kill every process of this cluster (their command lines name its temp dir) and their children,
    leaving any other Ray on the machine alone (`ray stop` would kill them all)."""
    roots = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="ignore"):
                roots.append(int(cmdline.parent.name))
        except OSError:
            continue
    for pid in {p for root in roots for p in [root, *_children(root)]}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def two_node_cluster():
    # Not under pytest's basetemp: a concurrent pytest session may prune that while the cluster runs.
    temp_dir = Path(tempfile.mkdtemp(prefix="mm1-rayhead-"))
    # Each node its own temp dir, as on separate hosts: two nodes sharing one runtime_resources folder
    # garbage-collect each other's unpacked working_dir.
    worker_temp_dir = Path(tempfile.mkdtemp(prefix="mm1-rayworker-"))
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "RAY_AUTH_TOKEN": token,
        "RAY_AUTH_MODE": "token",
        "PATH": f"{BIN}:{os.environ['PATH']}",  # the job's `python` is this environment's
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    gcs, dashboard, client = free_ports(3)
    ray = str(BIN / "ray")
    head = [
        ray, "start", "--head", f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
        "--num-cpus=3", f"--temp-dir={temp_dir}", f"--ray-client-server-port={client}",
        "--min-worker-port=21000", "--max-worker-port=21999",
    ]  # fmt: skip
    worker = [
        ray, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=2", f"--temp-dir={worker_temp_dir}",
        "--min-worker-port=22000", "--max-worker-port=22999",
    ]  # fmt: skip
    try:
        start_node(head, env, str(temp_dir))
        start_node(worker, env, str(worker_temp_dir))
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 60
        while True:
            nodes = get_json(f"{address}/nodes?view=summary", token)["data"]["summary"]
            if sum(n["raylet"]["state"] == "ALIVE" for n in nodes) == 2:
                break
            assert time.monotonic() < deadline, "the worker node never joined"
            time.sleep(1)
        yield address, token, env
    finally:
        for folder in (temp_dir, worker_temp_dir):
            kill_cluster(str(folder))
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.e2e
def test_submit_reduced_quickstart_to_a_two_node_cluster(two_node_cluster, tmp_path):
    address, token, env = two_node_cluster
    overrides = [
        *REDUCED,
        f"storage.root={tmp_path}",
        "sweep={}",
        "pretrain.num_workers=2",
        "pretrain.placement_strategy=STRICT_SPREAD",
        "deploy.enabled=false",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "mm1.cli", "submit", "--address", address, str(QUICKSTART), *overrides],
        cwd=ROOT,
        env={k: v for k, v in env.items() if k != "RAY_AUTH_MODE"},  # the client turns token auth on itself
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
    submission_id = proc.stdout.split("submitted job ")[1].split()[0]

    jobs = get_json(f"{address}/api/jobs/", token)
    job = next(j for j in jobs if j.get("submission_id") == submission_id)
    assert job["status"] == "SUCCEEDED"
    assert job["metadata"]["workflow"] == "quickstart"
    assert job["metadata"]["run_dir"] == f"{tmp_path}/quickstart"

    # Training used workers on both nodes: the Ray Train worker actors of this job ran on two node ids.
    actors = get_json(
        f"{address}/api/v0/actors?detail=1&limit=1000&filter_keys=class_name&filter_predicates=%3D"
        "&filter_values=RayTrainWorker",
        token,
    )["data"]["result"]["result"]
    nodes = {a["node_id"] for a in actors if a.get("job_id") == job["job_id"]}
    assert len(nodes) == 2, actors
    manifest = json.loads((tmp_path / "quickstart" / "select" / "manifest.json").read_text())
    assert manifest["status"] == "done"
