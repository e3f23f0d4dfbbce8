"""`mm1 run` as a newcomer sees it, on a terminal: the reduced quick start, end to end, under a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from quickstart_overrides import QUICKSTART, REDUCED
from ray_cluster import free_ports

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_in_terminal(argv: list[str], timeout_s: float, env: dict[str, str]) -> tuple[int, str]:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, close_fds=True, env=env)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.e2e
def test_a_healthy_run_on_a_terminal_reads_cleanly(tmp_path):
    [port] = free_ports(1)
    argv = [sys.executable, "-m", "mm1.cli", "run", str(QUICKSTART), *REDUCED, "deploy.ingress=proxy"]
    # Serve's Python proxy: HAProxy's stats ports are fixed, so a HAProxy-fronted Serve elsewhere on the machine
    # would make this run fail for a reason that is not the console's (the quick-start e2e test covers HAProxy).
    env = {k: v for k, v in os.environ.items() if k != "RAY_SERVE_ENABLE_HA_PROXY"}
    code, screen = run_in_terminal([*argv, f"storage.root={tmp_path}", f"deploy.port={port}"], 900, env)
    assert code == 0, screen[-6000:]
    # What stays on screen: the live bar is redrawn in place (\r, erase line), so drop each redrawn line.
    lines = [ANSI.sub("", part.split("\r")[-1]) for part in screen.replace("\r\n", "\n").split("\n")]
    lines = [line for line in lines if line.strip()]
    assert any(line.startswith("Ray dashboard: http://127.0.0.1:") for line in lines[:4]), lines[:6]
    progress = [line for line in lines if re.match(r"^\[(pretrain|sft):[^\]]+\] step \d+/\d+ loss", line)]
    assert progress and len(progress) == len(set(progress)), progress  # no progress line twice
    for stage, steps in (("pretrain", 6), ("sft", 4)):  # each run's last step, once, per candidate
        assert (
            sum(f"] step {steps}/{steps} loss" in line and line.startswith(f"[{stage}:") for line in progress)
            == 2
        )
    errors = [line for line in lines if "ERROR" in line or re.search(r"\d E \d", line) or "Traceback" in line]
    assert not errors, errors
    assert not [line for line in lines if "TrainingReport" in line or "core_worker.cc" in line]
    # Ray's own INFO logs (Ray Data's execution plans and progress, Serve's "Started Serve ..." included) go to
    # the file, not the screen; transformers' weight-loading bars are off.
    assert not [line for line in lines if re.search(r"\bINFO\b.* -- ", line)]
    assert not [line for line in lines if "Loading weights" in line]
    assert not [line for line in lines if re.search(r"\w+Warning: ", line)]  # no Python warning on screen
    summary = "\n".join(lines[-20:])
    assert "winner: " in summary and f"endpoint: http://127.0.0.1:{port}/v1" in summary
    assert "report: " in summary and "Ray's own logs of this run: " in summary
    ray_log = tmp_path / "quickstart" / "logs" / "ray.log"
    logged = ray_log.read_text()
    assert "TrainingReport" in logged  # Ray's chatter is kept, in the run folder
    # No node of a Ray started here is ever drained, so no preemption watcher (its start logged an error line).
    assert "PreemptionWatcher" not in logged
