"""The runner: walks the step graph, skipping every step whose manifest still matches its fingerprint.

A step writes only under its own folder of the run directory and ends by writing `manifest.json`
(fingerprint, outputs, headline figures, wall time). `state.json` beside it says a step is running, so
`mm1 status` can tell a finished step from one that was killed half way. A killed workflow rerun with the same
command skips what finished; the training steps resume from their last checkpoint on their own.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from mm1 import metrics, storage
from mm1.config import Workflow, dump, to_dict
from mm1.workflow.fingerprint import step_fingerprint
from mm1.workflow.rundir import RunDir

Log = Callable[[str], None]
ERROR_LOG = "error.log"  # a failed step's traceback, in its folder
T = TypeVar("T")


@dataclass
class StepContext:
    wf: Workflow
    rundir: RunDir
    out: Path  # the step's folder on the driver's disk (a staging copy when the run folder is remote)
    upstream: dict[str, dict[str, Any]]  # manifests of every step that ran before, by name
    log: Log

    @property
    def out_uri(self) -> str:
        """The step's folder in the run directory: what Ray tasks write to and what outputs point at."""
        return self.rundir.step_uri(self.out.name)

    def inputs(self, step: str, kind: type[T]) -> T:
        """An upstream step's outputs, typed (`kind` is a dataclass of mm1.workflow.outputs)."""
        return kind.from_dict(self.upstream[step]["outputs"])  # type: ignore[attr-defined]


@dataclass
class StepResult:
    outputs: Any = field(default_factory=dict)  # a dataclass of mm1.workflow.outputs (or a plain dict)
    headline: dict[str, Any] = field(default_factory=dict)  # a few figures for `mm1 status`
    figures: list[str] = field(default_factory=list)


@dataclass
class Step:
    name: str
    depends: tuple[str, ...]
    config_keys: tuple[str, ...]  # workflow keys whose values enter the fingerprint
    run: Callable[[StepContext], StepResult]
    always_run: bool = False  # deploy starts a live process: there is nothing to skip
    reset_on_rerun: bool = True  # training steps keep their folder: it holds the checkpoints they resume from


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StepFailed(RuntimeError):
    def __init__(self, step: str, cause: BaseException, log_uri: str = ""):
        self.step, self.cause, self.log_uri = (
            step,
            cause,
            log_uri,
        )  # log_uri: the traceback, in the run folder
        super().__init__(f"step '{step}' failed: {cause}")


def run_workflow(
    wf: Workflow,
    steps: list[Step],
    *,
    from_step: str | None = None,
    until: str | None = None,
    log: Log = print,
) -> dict[str, dict[str, Any]]:
    """Run `steps` in order; returns every step's manifest by name."""
    names = [s.name for s in steps]
    for option, value in (("--from", from_step), ("--until", until)):
        if value is not None and value not in names:
            raise ValueError(f"{option} {value!r} is not a step; steps are: {', '.join(names)}")
    forced_from = names.index(from_step) if from_step else len(names)
    last = names.index(until) if until else len(names) - 1

    rundir = RunDir(wf.storage.root, wf.run_name)
    rundir.write_json(
        "run.json", {"workflow": wf.name, "run_name": wf.run_name, "uri": rundir.uri, "updated": now()}
    )
    rundir.write_text("workflow.yaml", dump(wf))
    config = to_dict(wf)
    manifests: dict[str, dict[str, Any]] = {}
    fingerprints: dict[str, str] = {}
    for index, step in enumerate(steps[: last + 1]):
        fingerprint = step_fingerprint(
            step.name, config, step.config_keys, {d: fingerprints[d] for d in step.depends}
        )
        fingerprints[step.name] = fingerprint
        previous = rundir.read_json(f"{step.name}/manifest.json")
        if (
            not step.always_run
            and index < forced_from
            and previous
            and previous.get("fingerprint") == fingerprint
            and previous.get("status") == "done"
        ):
            log(
                f"[{step.name}] skipped: unchanged since {previous.get('finished')} (fingerprint {fingerprint[:12]})"
            )
            manifests[step.name] = previous
            metrics.step_state(wf.name, step.name, "skipped")
            continue
        why = (
            "forced by --from"
            if index >= forced_from
            else ("config or inputs changed" if previous else "first run")
        )
        log(f"[{step.name}] running ({why})")
        out = rundir.reset_step(step.name) if step.reset_on_rerun else rundir.local_step_dir(step.name)
        started, t0 = now(), time.perf_counter()
        rundir.write_json(f"{step.name}/state.json", {"status": "running", "started": started})
        metrics.step_state(wf.name, step.name, "running")
        try:
            result = step.run(StepContext(wf, rundir, out, dict(manifests), log))
        except BaseException as exc:
            rundir.write_json(
                f"{step.name}/state.json",
                {
                    "status": "failed",
                    "started": started,
                    "finished": now(),
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            metrics.step_state(wf.name, step.name, "failed")
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            # The whole story stays in the run folder; the console gets what the user can act on (mm1.cli).
            error_log = f"{step.name}/{ERROR_LOG}"
            rundir.write_text(error_log, f"{now()} step '{step.name}' failed\n{traceback.format_exc()}")
            raise StepFailed(step.name, exc, storage.join(rundir.uri, error_log)) from exc
        duration = time.perf_counter() - t0
        manifest = {
            "step": step.name,
            "status": "done",
            "fingerprint": fingerprint,
            "upstream": {d: fingerprints[d] for d in step.depends},
            "started": started,
            "finished": now(),
            "duration_s": round(duration, 2),
            "outputs": asdict(result.outputs) if is_dataclass(result.outputs) else result.outputs,
            "headline": result.headline,
            "figures": result.figures,
        }
        rundir.publish(step.name)
        rundir.write_json(f"{step.name}/manifest.json", manifest)
        rundir.write_json(
            f"{step.name}/state.json", {"status": "done", "started": started, "finished": now()}
        )
        manifests[step.name] = manifest
        metrics.step_state(wf.name, step.name, "done", duration)
        log(f"[{step.name}] done in {duration:.1f} s {_headline_text(result.headline)}")
    return manifests


def _headline_text(headline: dict[str, Any]) -> str:
    if not headline:
        return ""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in headline.items()]
    return "(" + ", ".join(parts) + ")"


def step_states(rundir: RunDir, names: list[str]) -> list[dict[str, Any]]:
    """For `mm1 status`: each step's state, wall time and headline figures."""
    rows = []
    for name in names:
        manifest = rundir.read_json(f"{name}/manifest.json")
        state = rundir.read_json(f"{name}/state.json") or {}
        status = state.get("status") or ("done" if manifest else "pending")
        if status == "running":
            status = "running or killed"
        rows.append(
            {
                "step": name,
                "status": status,
                "duration_s": (manifest or {}).get("duration_s"),
                "finished": (manifest or {}).get("finished") or state.get("finished"),
                "headline": (manifest or {}).get("headline", {}),
                "error": state.get("error"),
            }
        )
    return rows
