"""Real `ray start` clusters on this machine whose nodes share no disk (token auth on, as Ray 2.59+ starts).

Each node is started inside its own mount namespace (`unshare -m`, as root) with fresh tmpfs mounts over
/tmp (where pytest's folders, Ray's temp dirs and the platform's caches live), over the folders of $HOME the
platform writes to, and over the checkout's `runs` folder, and with HOME pointing into that tmpfs: a node
sees the installed code and nothing another node (or this test process) wrote. Killing a node's processes
(`kill -9`) drops its namespace and everything it wrote there, as losing a machine would.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

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


def _masked_folders() -> list[str]:
    """What a node must not share with the others. /tmp as a whole, unless the code itself lives there (a
    checkout under /tmp): then only the folders this session writes to under it."""
    tmp = Path(tempfile.gettempdir()).resolve()
    code = [ROOT.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    if any(tmp in path.parents or path == tmp for path in code):
        basetemp = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT", tmp)) / f"pytest-of-{getpass.getuser()}"
        masked = [basetemp, Path(os.environ.get("MM1_CACHE_DIR", tmp / "mm1-cache"))]
    else:
        masked = [tmp]
    home = Path.home()
    masked += [home / ".cache", home / ".ray", ROOT / "runs"]
    return [str(p) for p in masked if p.is_dir()]


def isolated(command: list[str]) -> list[str]:
    """`command` in a mount namespace of its own, with fresh tmpfs mounts (see the module docstring)."""
    steps = [f"mount -t tmpfs tmpfs {shlex.quote(folder)}" for folder in _masked_folders()]
    steps += ["mkdir -p /tmp/mm1-node-home", "export HOME=/tmp/mm1-node-home", 'exec "$@"']
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        " && ".join(steps),
        "node",
        *command,
    ]


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


def kill_processes(marker: str) -> int:
    """kill -9 every process whose command line names `marker` (a node's temp dir), and their children,
    leaving any other Ray on the machine alone (`ray stop` would kill them all). Returns how many."""
    roots = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="ignore"):
                roots.append(int(cmdline.parent.name))
        except OSError:
            continue
    killed = 0
    for pid in {p for root in roots for p in [root, *_children(root)]}:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@dataclass
class Cluster:
    """A head and workers, each node isolated; `address` is the dashboard (jobs API) URL."""

    env: dict[str, str]
    token: str
    head_cpus: int = 3
    worker_cpus: tuple[int, ...] = (2,)
    isolate: bool = True  # False: the nodes share this machine's disk (a baseline, or NFS-like storage)
    markers: list[str] = field(default_factory=list)
    address: str = ""

    def start(self) -> Cluster:
        gcs, dashboard, client = free_ports(3)
        head_dir = f"/tmp/mm1-head-{secrets.token_hex(4)}"
        self.markers.append(head_dir)
        head = [
            str(BIN / "ray"), "start", "--head", f"--port={gcs}", f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1", f"--num-cpus={self.head_cpus}", f"--temp-dir={head_dir}",
            f"--ray-client-server-port={client}", "--min-worker-port=21000", "--max-worker-port=21999",
        ]  # fmt: skip
        self._start_node(head, head_dir)
        for n, cpus in enumerate(self.worker_cpus):
            worker_dir = f"/tmp/mm1-worker{n}-{secrets.token_hex(4)}"
            self.markers.append(worker_dir)
            worker = [
                str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}", f"--num-cpus={cpus}",
                f"--temp-dir={worker_dir}", f"--min-worker-port={22000 + 1000 * n}",
                f"--max-worker-port={22999 + 1000 * n}",
            ]  # fmt: skip
            self._start_node(worker, worker_dir)
        self.address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 90
        while self.alive_nodes() != 1 + len(self.worker_cpus):
            assert time.monotonic() < deadline, "the worker nodes never joined"
            time.sleep(1)
        return self

    def _start_node(self, command: list[str], marker: str, attempts: int = 3) -> None:
        """`ray start` with ports picked just before it runs. A port free when picked can be taken by the
        time a daemon binds it, so a failed start is cleaned up and retried with fresh ports; the last
        failure is shown with Ray's own output."""
        for attempt in range(1, attempts + 1):
            full = [*command, *node_ports()]
            proc = subprocess.run(
                isolated(full) if self.isolate else full,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            if proc.returncode == 0:
                return
            kill_processes(marker)
            if attempt == attempts:
                raise AssertionError(
                    f"`ray start` failed {attempts} times; last output:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
                )

    def alive_nodes(self) -> int:
        try:
            nodes = get_json(f"{self.address}/nodes?view=summary", self.token)["data"]["summary"]
        except OSError:
            return 0
        return sum(n["raylet"]["state"] == "ALIVE" for n in nodes)

    def get(self, path: str) -> dict:
        return get_json(f"{self.address}{path}", self.token)

    def kill(self) -> int:
        """kill -9 every process of every node (the head's first); returns how many."""
        return sum(kill_processes(marker) for marker in self.markers)


def new_cluster_env() -> tuple[dict[str, str], str]:
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "RAY_AUTH_TOKEN": token,
        "RAY_AUTH_MODE": "token",
        "PATH": f"{BIN}:{os.environ['PATH']}",  # the job's `python` is this environment's
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return env, token


def submit(address: str, env: dict[str, str], workflow: Path, overrides: list[str], follow: bool = True):
    """`mm1 submit` as a user runs it; returns the finished process (its output holds the job's log)."""
    command = [sys.executable, "-m", "mm1.cli", "submit", "--address", address, str(workflow), *overrides]
    if not follow:
        command.insert(4, "--no-follow")
    return subprocess.run(
        command,
        cwd=ROOT,
        env={k: v for k, v in env.items() if k != "RAY_AUTH_MODE"},  # the client turns token auth on itself
        capture_output=True,
        text=True,
        timeout=1200,
    )


def submission_id(stdout: str) -> str:
    return stdout.split("submitted job ")[1].split()[0]
