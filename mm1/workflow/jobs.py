"""The Ray-cluster backend's launch (mm1.workflow.backends): a workflow becomes a Ray Job (visible in the
dashboard) that runs `mm1 run`.

The job carries what it needs: the workflow file (working_dir) and this package's code (py_modules), so the
cluster's image only needs the dependencies. Ray 2.59+ clusters use token authentication: the client turns
it on when a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from mm1 import storage
from mm1.config import Workflow
from mm1.errors import UserFacingError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class JobFailed(UserFacingError, RuntimeError):
    """A submitted job ended in FAILED or STOPPED (its log was printed while following it)."""


class JobNotFound(UserFacingError, ValueError):
    """`mm1 status` was given something that is neither a run folder nor a job it can look up."""


def _enable_token_auth() -> None:
    has_token = (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").exists()
    )
    if has_token and not os.environ.get("RAY_AUTH_MODE"):
        os.environ["RAY_AUTH_MODE"] = "token"


def client(address: str):
    _enable_token_auth()
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _package_dirs() -> list[str]:
    import mm1
    import services

    return [str(Path(mm1.__file__).parent), str(Path(services.__file__).parent)]


def submit_job(
    wf: Workflow,
    workflow_path: str,
    overrides: Sequence[str],
    address: str,
    follow: bool = True,
    log=print,
) -> str:
    """Submit the workflow as a Ray Job; returns the submission id."""
    overrides = list(overrides)
    root = wf.storage.root
    if not storage.is_uri(root) and not Path(root).is_absolute():
        # A relative root would land in the job's temporary working_dir; pin it to this machine's path,
        # which must be shared storage on a multi-host cluster.
        root = str(Path(root).resolve())
        overrides.append(f"storage.root={root}")
        log(f"storage.root '{wf.storage.root}' is relative: the job writes to {root}")
    submission_id = f"mm1-{wf.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    entrypoint = " ".join(
        [
            "python -m mm1.cli run --here workflow.yaml",
            *(shlex.quote(o) for o in overrides),
            "deploy.keep_serving=false",
        ]
    )
    run_dir = storage.join(root, wf.run_name)
    job_client = client(address)
    # The working_dir is packed and uploaded by submit_job itself, so the staging folder can go after it.
    with tempfile.TemporaryDirectory(prefix="mm1-job-") as staging:
        shutil.copy(workflow_path, Path(staging) / "workflow.yaml")
        job_client.submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env={"working_dir": staging, "py_modules": _package_dirs()},
            metadata={"workflow": wf.name, "run_dir": run_dir, "workflow_file": str(workflow_path)},
        )
    log(f"submitted job {submission_id} to {address} (run folder {run_dir})")
    log(
        f"  mm1 status {submission_id} --address {address}   |   mm1 logs {submission_id} --address {address} -f"
    )
    if follow:
        status = follow_job(job_client, submission_id, log=log)
        if status != "SUCCEEDED":
            raise JobFailed(
                f"job {submission_id} ended {status}; see `mm1 logs {submission_id} --address {address}`"
            )
    return submission_id


def follow_job(
    job_client, submission_id: str, log=print, poll_s: float = 2.0, timeout_s: float | None = None
) -> str:
    """Print new log lines until the job ends; returns its final status."""
    printed = 0
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        status = str(job_client.get_job_status(submission_id).value)
        logs = job_client.get_job_logs(submission_id)
        if len(logs) > printed:
            log(logs[printed:].rstrip("\n"))
            printed = len(logs)
        if status in TERMINAL:
            return status
        if deadline and time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


def job_status(job_id: str, address: str | None) -> str:
    if not address:
        raise JobNotFound(
            f"'{job_id}' is neither a run folder nor, without --address, a job id",
            hint="pass a run folder (storage.root/<run name>, e.g. runs/quickstart), or a job id with "
            "--address http://HOST:8265",
        )
    info = client(address).get_job_info(job_id)
    meta = info.metadata or {}
    return (
        f"job {job_id}: {info.status}\n  workflow {meta.get('workflow', '?')}, run folder {meta.get('run_dir', '?')}"
        + (f"\n  {info.message}" if info.message else "")
    )


def job_logs(job_id: str, address: str, follow: bool = False) -> None:
    job_client = client(address)
    if follow:
        follow_job(job_client, job_id)
    else:
        print(job_client.get_job_logs(job_id))
