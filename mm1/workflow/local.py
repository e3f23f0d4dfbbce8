"""The local backend: an in-process Ray (with its dashboard) running the workflow's steps.

Inside a Ray Job on a cluster (`mm1 submit`), RAY_ADDRESS is set and the same code joins that cluster instead.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from mm1.config import Workflow
from mm1.workflow.runner import Log, run_workflow
from mm1.workflow.steps import workflow_steps


def start_ray(wf: Workflow, log: Log = print) -> None:
    """Start (or join) Ray and print where its dashboard is."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        context = ray.init(address="auto", namespace="mm1", log_to_driver=True)
    else:
        from services.ingress import prepare_local_ray

        # Serve's ingress is fixed when Ray starts, long before the deploy step: choose it now.
        ingress = prepare_local_ray(wf.deploy.ingress)
        log(f"Serve ingress: {ingress}")
        # Logical CPUs above the physical count let Ray Data's tasks run beside training workers that hold a
        # CPU each; without them, a 2-core laptop would deadlock data against training.
        cpus = wf.cluster.num_cpus or (os.cpu_count() or 2) + 2
        context = ray.init(
            num_cpus=cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=wf.cluster.dashboard_port,
            namespace="mm1",
            log_to_driver=True,
        )
    url = getattr(context, "dashboard_url", "") or ""
    log(
        f"Ray dashboard: http://{url}"
        if url and not url.startswith("http")
        else f"Ray dashboard: {url or 'n/a'}"
    )


def run_local(
    wf: Workflow, *, from_step: str | None = None, until: str | None = None, log: Log = print
) -> dict:
    start_ray(wf, log)
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


def serve_forever(log: Log = print) -> None:
    """Keep the deployment up until Ctrl-C (or SIGTERM)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log("serving; press Ctrl-C to stop")
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    from ray import serve

    serve.shutdown()
