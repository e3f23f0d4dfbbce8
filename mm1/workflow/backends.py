"""Where a workflow runs and where its winner is served: one small interface, one implementation per backend.

| backend (cluster.backend) | `launch`: the whole workflow                          | `deploy`: the deploy step          |
|---------------------------|-------------------------------------------------------|------------------------------------|
| local                     | the steps on an in-process Ray (`mm1 run`)            | a Serve app on this Ray            |
| ray                       | a Ray Job running `mm1 run --here` (`mm1 submit`)     | a Serve app on the job's Ray       |
| k8s                       | a KubeRay RayJob running `mm1 run --here` (`--k8s`)   | a RayService of its own            |

A remote launch ends in `mm1 run --here` on the cluster, i.e. in the local backend's launch there, whose
deploy step then asks `backend(wf.cluster.backend)` how to serve. Steps and the CLI reach the backends only
through this module; it is the one part of `mm1.workflow` that uses `mm1.k8s` (imported when used: the
Kubernetes client is optional for local use).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from mm1.config import Workflow
from mm1.errors import UserFacingError

Log = Callable[[str], None]


class RunFolderError(UserFacingError, OSError):
    """The run folder cannot be written where storage.root points."""


class Backend(ABC):
    """Ray's own backends serve the winner on the Ray the steps run on; KubeRay overrides `deploy`."""

    name: ClassVar[str]
    # Whether `deploy` serves on this process's Ray (so `mm1 run` can keep serving until Ctrl-C).
    serves_here: ClassVar[bool] = True

    @abstractmethod
    def launch(self, wf: Workflow, path: str, overrides: Sequence[str], *, follow: bool, log: Log) -> None:
        """Run the workflow `wf` (loaded from the file at `path` with `overrides`) on this backend; with
        `follow`, wait for its end and raise if it failed."""

    def deploy(self, wf: Workflow, winner: dict[str, Any], out_dir: Path, log: Log = print) -> dict[str, Any]:
        """Serve winner["checkpoint"] as wf.deploy says; returns {"url", "model", "sample", "parity"} (the
        parity gate's figures, services.parity); url "" when deploy.enabled is false."""
        from services.deploy import deploy_winner

        return deploy_winner(wf, winner, out_dir, log=log)


class LocalRay(Backend):
    name = "local"

    def launch(
        self,
        wf: Workflow,
        path: str = "",
        overrides: Sequence[str] = (),
        *,
        follow: bool = True,
        log: Log = print,
        from_step: str | None = None,
        until: str | None = None,
        verbose: bool = False,
    ) -> None:
        """The steps run in this process (so `follow` changes nothing); then, if deploy.keep_serving and the
        winner is served here, serve until Ctrl-C or SIGTERM."""
        from mm1.console import Console
        from mm1.workflow.local import run_local
        from mm1.workflow.rundir import RunDir

        logs = RunDir(wf.storage.root, wf.run_name).local_root / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(
                f"cannot create the run folder's {logs} ({exc.strerror or exc})",
                hint="set storage.root to a folder you can write (a local path or an object-store URI)",
            ) from exc
        console = Console(logs / "ray.log", verbose)
        try:
            manifests = run_local(wf, from_step=from_step, until=until, log=console.line, console=console)
        finally:
            console.close()
        log(f"Ray's own logs of this run: {console.log_path} (`--verbose` shows them here)")
        deploy = wf.deploy
        if (
            deploy.enabled
            and deploy.keep_serving
            and "deploy" in manifests
            and backend(wf.cluster.backend).serves_here
        ):
            from services.deploy import serve_until_stopped

            log("serving; press Ctrl-C to stop")
            serve_until_stopped(wf.name)


class RayJobs(Backend):
    name = "ray"

    def launch(self, wf: Workflow, path: str, overrides: Sequence[str], *, follow: bool, log: Log) -> None:
        """A Ray Job on the cluster at cluster.address (its dashboard, http://HOST:8265)."""
        from mm1.workflow.jobs import submit_job

        submit_job(wf, path, overrides, wf.cluster.address, follow=follow, log=log)


class KubeRay(Backend):
    name = "k8s"
    serves_here = False

    def launch(self, wf: Workflow, path: str, overrides: Sequence[str], *, follow: bool, log: Log) -> None:
        """A ConfigMap with the workflow file (the overrides are already in `wf`) and a RayJob that runs it."""
        from mm1.k8s.submit import submit_k8s

        submit_k8s(wf, Path(path).read_text(), follow=follow, log=log)

    def deploy(self, wf: Workflow, winner: dict[str, Any], out_dir: Path, log: Log = print) -> dict[str, Any]:
        """A RayService of its own, outliving the RayJob's cluster; returns its in-cluster URL. The parity
        gate runs on the RayJob's cluster first (services.deploy.gate_before_switch): a checkpoint that fails
        it never reaches the RayService, which keeps serving the previous one."""
        model = wf.deploy.model_name or wf.name
        if not wf.deploy.enabled:
            log("[deploy] disabled (deploy.enabled=false): nothing served")
            return {"url": "", "model": model, "sample": None}
        from mm1.k8s.submit import apply_service
        from services.deploy import gate_before_switch

        parity = gate_before_switch(wf, str(winner["checkpoint"]), log)
        url = apply_service(wf, winner["checkpoint"], log=log)
        return {"url": url, "model": model, "sample": None, "parity": parity}


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (LocalRay, RayJobs, KubeRay)}


def backend(name: str) -> Backend:
    """The backend cluster.backend names."""
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(f"cluster.backend must be one of {sorted(BACKENDS)}, got {name!r}") from None
