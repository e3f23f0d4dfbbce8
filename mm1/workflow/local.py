"""The local backend's launch (mm1.workflow.backends): an in-process Ray (with its dashboard) running the
workflow's steps.

Inside a Ray Job on a cluster (`mm1 submit`), RAY_ADDRESS is set and the same code joins that cluster instead.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from mm1.config import Workflow
from mm1.console import Console
from mm1.workflow.runner import Log, run_workflow
from mm1.workflow.steps import workflow_steps

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # read by Ray Train V2 (propagated to its workers)


def run_local(
    wf: Workflow,
    *,
    from_step: str | None = None,
    until: str | None = None,
    log: Log = print,
    console: Console | None = None,
) -> dict:
    """Start (or join) Ray, run the steps, log a summary; returns the steps' manifests. With a `console`,
    the workers' output goes through it (progress shown, Ray's chatter to the run folder's log)."""
    from services.ingress import start_ray

    if not os.environ.get("RAY_ADDRESS"):
        # Ray Train's preemption watcher polls for nodes an autoscaler drains, one more actor per training
        # stage, started while the stage's own workers start (and its start logs an error-level line). A Ray
        # started here is this one machine, which nobody drains. An operator's own setting is kept.
        os.environ.setdefault(PREEMPTION_WATCHER, "0")
    # Serve's ingress is fixed when Ray starts, long before the deploy step: it is chosen now. Logical CPUs
    # above the physical count let Ray Data's tasks run beside training workers that hold a CPU each; without
    # them, a 2-core laptop would deadlock data against training.
    start_ray(
        wf.deploy.ingress,
        log,
        num_cpus=wf.cluster.num_cpus or (os.cpu_count() or 2) + 2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=wf.cluster.dashboard_port,
        # Ray's start-up INFO and warnings go to the log file once the console takes over (its line below).
        **({"logging_level": logging.ERROR} if console is not None and not console.verbose else {}),
    )
    if console is not None:
        console.install()
    t0 = time.perf_counter()
    manifests = run_workflow(wf, workflow_steps(), from_step=from_step, until=until, log=log)
    log(f"workflow '{wf.name}' finished in {time.perf_counter() - t0:.1f} s (after Ray start-up)")
    summarize(manifests, log)
    return manifests


def summarize(manifests: dict[str, dict[str, Any]], log: Log) -> None:
    select = manifests.get("select")
    if select:
        winner = select["outputs"]["winner"]
        log(f"winner: {winner['candidate']} ({winner['checkpoint']})")
        for key, value in sorted(winner.get("metrics", {}).items()):
            log(f"  {key:<40} {value:.4f}" if isinstance(value, float) else f"  {key:<40} {value}")
    deploy = manifests.get("deploy")
    if deploy and deploy["outputs"].get("url"):
        log(f"endpoint: {deploy['outputs']['url']}")
        sample = deploy["outputs"].get("sample")
        if sample:
            log(
                f"asked the endpoint about a fresh Shapes image: {sample['question']!r} -> {sample['answer']!r}"
                f" (truth: {sample['truth']!r})"
            )
    report = manifests.get("report")
    if report:
        log(f"report: {report['outputs']['html']}")
