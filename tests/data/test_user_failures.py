"""Failures the user can act on end `mm1` with one clear message (which step, why, what to do, where the full
log is) and a non-zero exit, never a traceback on the console; bugs keep their traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_ingest_step import write_named_corpora  # the corrupt real-format corpora

from mm1 import cli
from mm1.data.ingest import IngestError
from mm1.errors import UserFacingError
from mm1.eval.coco import BenchmarkFileError
from mm1.workflow.runner import StepFailed

QUICKSTART = str(Path(__file__).parents[2] / "workflows" / "quickstart.yaml")


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def corpora_overrides(root: Path) -> list[str]:
    return [
        f"data.corpora.captions=[{root}/*.tar]",
        f"data.corpora.text=[{root}/text.jsonl]",
        f"data.corpora.sft=[{root}/sft.json]",
        "data.vocab_size=300",
    ]


def test_too_many_corrupt_records_end_the_run_with_one_message(ray_session, tmp_path, capsys):
    corpora = tmp_path / "in"
    corpora.mkdir()
    write_named_corpora(corpora, bad_captions=12)
    argv = ["run", QUICKSTART, f"storage.root={tmp_path}/runs", "data.max_bad_fraction=0.05"]
    code, err = run_cli(capsys, *argv, *corpora_overrides(corpora), "--until", "ingest")
    assert code == cli.EXIT_FAILED
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: step 'ingest' failed: ") and "max_bad_fraction" in lines[0]
    assert "caps.tar" in lines[0]  # the worst file, named
    assert lines[1].startswith("  what to do: ") and "data.max_bad_fraction" in lines[1]
    log = Path(lines[2].removeprefix("  full log: "))
    assert log == tmp_path / "runs" / "quickstart" / "ingest" / "error.log"
    assert "Traceback" in log.read_text() and "IngestError" in log.read_text()
    state = json.loads((log.parent / "state.json").read_text())
    assert state["status"] == "failed"


def test_a_missing_corpus_file_names_the_key(ray_session, tmp_path, capsys):
    argv = ["run", QUICKSTART, f"storage.root={tmp_path}", f"data.corpora.text=[{tmp_path}/nope.jsonl]"]
    code, err = run_cli(capsys, *argv, "--until", "ingest")
    assert code == cli.EXIT_FAILED and "Traceback" not in err
    assert "step 'ingest' failed: data.corpora:" in err and "nope.jsonl" in err


def test_an_error_raised_in_a_ray_task_is_told_without_its_remote_traceback(ray_session):
    import ray

    @ray.remote
    def read_corpus():
        raise IngestError("data.corpora: 3 of 4 records are corrupt")

    with pytest.raises(IngestError) as raised:
        ray.get(read_corpus.remote())
    assert 'File "' in str(raised.value)  # Ray's re-raised error carries the remote stack
    error = cli.user_facing(StepFailed("ingest", raised.value))
    assert type(error) is IngestError and str(error) == "data.corpora: 3 of 4 records are corrupt"
    assert error.hint  # and what to do comes with it


def test_a_missing_benchmark_file_is_the_users_and_a_bug_is_not(capsys):
    missing = StepFailed("evaluate", BenchmarkFileError("cannot read the captions file x.json"), "log")
    assert cli.report_failure(missing)
    err = capsys.readouterr().err
    assert err.startswith("error: step 'evaluate' failed: cannot read the captions file x.json\n")
    assert "  full log: log" in err
    assert not cli.report_failure(StepFailed("evaluate", ZeroDivisionError("division by zero")))
    assert cli.user_facing(KeyError("x")) is None


def test_a_bug_in_a_step_keeps_its_traceback(tmp_path, monkeypatch):
    from mm1.workflow import steps

    def broken(ctx):
        raise ZeroDivisionError("a bug")

    real = steps.workflow_steps
    monkeypatch.setattr(
        steps,
        "workflow_steps",
        lambda: [s if s.name != "ingest" else type(s)("ingest", (), s.config_keys, broken) for s in real()],
    )
    from mm1.config import load
    from mm1.workflow.runner import run_workflow

    wf = load(QUICKSTART, [f"storage.root={tmp_path}"])
    with pytest.raises(StepFailed) as failed:
        run_workflow(wf, steps.workflow_steps(), until="ingest", log=lambda _: None)
    assert isinstance(failed.value.cause, ZeroDivisionError) and not cli.report_failure(failed.value)


def test_a_port_in_use_is_refused_before_serve_starts(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # passes the checkpoint check; the port is refused first
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "mm1.cli", "serve", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"error: port {port} on 127.0.0.1 is in use by another process" in proc.stderr
    assert "what to do: set deploy.port (or `mm1 serve --port`) to a free port" in proc.stderr


def test_haproxys_held_ports_are_refused_before_ray_starts(tmp_path):
    """A HAProxy left behind by an interrupted run holds HAProxy's stats port: a run that asks for HAProxy
    stops before Ray starts (`auto` takes Serve's Python proxy instead: tests/services/test_ingress.py)."""
    (tmp_path / "config.json").write_text("{}")
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {
            **os.environ,
            "RAY_SERVE_HAPROXY_STATS_PORT": str(port),
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(fake),
        }
        env.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
        proc = subprocess.run(
            [sys.executable, "-m", "mm1.cli", "serve", str(tmp_path), "--ingress", "haproxy"],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (
        f"HAProxy's stats port {port} (RAY_SERVE_HAPROXY_STATS_PORT) is in use by another process"
        in proc.stderr
    )
    assert "deploy.ingress=proxy" in proc.stderr


def test_a_taken_dashboard_port_is_refused_before_ray_starts(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        argv = ["run", QUICKSTART, f"storage.root={tmp_path}", f"cluster.dashboard_port={port}"]
        proc = subprocess.run(
            [sys.executable, "-m", "mm1.cli", *argv], capture_output=True, text=True, timeout=240
        )
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"error: the Ray dashboard's port {port} on 127.0.0.1 is in use by another process" in proc.stderr
    assert "what to do: set cluster.dashboard_port to a free port" in proc.stderr


@pytest.mark.parametrize(
    ("argv", "error", "what_to_do"),
    [
        (
            ["status", "{tmp}/no-such-run"],
            "'{tmp}/no-such-run' is neither a run folder nor, without --address, a job id",
            "pass a run folder (storage.root/<run name>",
        ),
        (
            ["serve", "{tmp}/no-such-checkpoint"],
            "checkpoint {tmp}/no-such-checkpoint does not exist",
            "pass a checkpoint's model folder",
        ),
        (
            ["serve", "{tmp}/checkpoint_000600"],
            "checkpoint {tmp}/checkpoint_000600 holds no model (no config.json)",
            "serve its model folder: {tmp}/checkpoint_000600/model",
        ),
        (
            ["chat", "--url", "http://127.0.0.1:{port}/v1", "hello"],
            "cannot reach an endpoint at http://127.0.0.1:{port}/v1",
            "start one (`mm1 serve CHECKPOINT`",
        ),
        (
            ["chat", "--image", "{tmp}/no.png", "what is it?"],
            "image file {tmp}/no.png does not exist",
            "pass --image with a readable file",
        ),
        (
            ["run", QUICKSTART, "storage.root={tmp}/file/runs"],
            "cannot create the run folder's {tmp}/file/runs/quickstart/logs (Not a directory)",
            "set storage.root to a folder you can write",
        ),
    ],
    ids=["status", "serve-missing", "serve-parent", "chat-no-endpoint", "chat-no-image", "run-root"],
)
def test_a_command_given_something_that_is_not_there_says_so_without_a_traceback(
    argv, error, what_to_do, tmp_path, capsys
):
    (tmp_path / "checkpoint_000600" / "model").mkdir(parents=True)
    (tmp_path / "checkpoint_000600" / "model" / "config.json").write_text("{}")
    (tmp_path / "file").write_text("a file where a folder is expected")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    fill = {"tmp": tmp_path, "port": port}
    code, err = run_cli(capsys, *(a.format(**fill) for a in argv))
    assert code == cli.EXIT_USAGE and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"error: {error.format(**fill)}")
    assert lines[1].startswith(f"  what to do: {what_to_do.format(**fill)}")


def test_every_user_facing_error_class_is_one():
    from mm1.config import ConfigError
    from mm1.k8s.pods import RenderError
    from mm1.k8s.submit import K8sError
    from mm1.workflow.backends import RunFolderError
    from mm1.workflow.jobs import JobFailed, JobNotFound
    from services.client import EndpointError
    from services.deploy import DeployError
    from services.ingress import IngressError, RayStartError

    for kind in (
        ConfigError,
        RayStartError,
        IngestError,
        BenchmarkFileError,
        JobFailed,
        JobNotFound,
        RunFolderError,
        EndpointError,
        IngressError,
        RenderError,
        K8sError,
    ):
        assert issubclass(kind, UserFacingError), kind
    assert issubclass(DeployError, UserFacingError) and issubclass(cli.UserError, UserFacingError)
