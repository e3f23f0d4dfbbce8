"""Run a workflow on Kubernetes: server-side apply the ConfigMap, then the RayJob, then follow its status.
The KubeRay backend of mm1.workflow.backends calls this module; steps never import it.

Server-side apply (PATCH, application/apply-patch+yaml, fieldManager=mm1, force) creates or updates in one
call and leaves fields other managers own alone; it also copes with the KubeRay CRDs' size, which breaks
client-side `kubectl apply`. The same path applies the RayService of the deploy step (`apply_service`),
from a laptop (kubeconfig) or from inside the job's pods (their service account).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from mm1.config import Workflow
from mm1.errors import UserFacingError
from mm1.k8s.render import render_job, render_service, service_url
from mm1.k8s.validate import validate_all

__all__ = ["K8sError", "submit_k8s", "apply_service", "apply", "load_api_client", "follow_rayjob"]

FIELD_MANAGER = "mm1"
# jobDeploymentStatus values after which KubeRay does nothing more for the RayJob.
TERMINAL = {"Complete", "Failed", "ValidationFailed"}
Log = Callable[[str], None]


class K8sError(UserFacingError, RuntimeError):
    """A Kubernetes problem the user can act on; the message says what to do."""


def load_api_client(context: str | None = None) -> Any:
    """An ApiClient from the pod's service account when running in a pod, else from the kubeconfig
    ($KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except ConfigException:
            pass  # a pod without a mounted token: fall back to a kubeconfig
    # Read KUBECONFIG now: the client library captures it once, at import.
    where = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        config.load_kube_config(config_file=where, context=context, client_configuration=configuration)
    except (ConfigException, OSError, TypeError) as exc:
        raise K8sError(
            f"no Kubernetes credentials: cannot load a kubeconfig from {where} ({exc}). Set KUBECONFIG or "
            "create ~/.kube/config (e.g. `kind create cluster`, `gcloud container clusters get-credentials`), "
            "or run inside a pod with a service account"
        ) from None
    return client.ApiClient(configuration)


def _dynamic(api_client: Any) -> Any:
    from kubernetes.dynamic import DynamicClient

    try:
        return DynamicClient(api_client)
    except Exception as exc:  # discovery failed: wrong address, TLS, credentials
        raise K8sError(
            f"cannot reach the Kubernetes API at {api_client.configuration.host}: {_summary(exc)}"
        ) from None


def _summary(exc: Exception) -> str:
    summary = getattr(exc, "summary", None)
    return str(summary() if callable(summary) else exc).strip().splitlines()[0]


def _resource(dyn: Any, api_version: str, kind: str) -> Any:
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        return dyn.resources.get(api_version=api_version, kind=kind)
    except ResourceNotFoundError:
        hint = (
            "; install the KubeRay operator v1.7 (its CRDs serve ray.io/v1), see k8s/README.md"
            if api_version.startswith("ray.io/")
            else ""
        )
        raise K8sError(f"the cluster does not serve {kind} ({api_version}){hint}") from None


def _explain(exc: Exception, verb: str, obj: dict[str, Any]) -> K8sError:
    meta = obj.get("metadata", {})
    what = f"{obj.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}"
    status = getattr(exc, "status", None)
    detail = _summary(exc)
    if status == 403:
        return K8sError(
            f"forbidden to {verb} {what}: {detail} (check your RBAC; k8s/README.md lists what is needed)"
        )
    if status == 404 and meta.get("namespace"):
        return K8sError(
            f"cannot {verb} {what}: {detail}. Does namespace '{meta['namespace']}' exist? "
            "Apply the base first: kubectl apply --server-side -k k8s/"
        )
    if status == 422:
        return K8sError(f"the API server rejected {what}: {detail}")
    return K8sError(f"cannot {verb} {what}: {detail}")


def apply(dyn: Any, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply one object; returns the object as the server now holds it."""
    resource = _resource(dyn, obj["apiVersion"], obj["kind"])
    meta = obj["metadata"]
    try:
        result = dyn.server_side_apply(
            resource,
            body=obj,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
    except Exception as exc:
        if getattr(exc, "status", None) is None:
            raise
        raise _explain(exc, "apply", obj) from None
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def _get(dyn: Any, resource: Any, name: str, namespace: str) -> dict[str, Any] | None:
    from kubernetes.dynamic.exceptions import NotFoundError

    try:
        return dyn.get(resource, name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


def _delete_finished(dyn: Any, resource: Any, name: str, namespace: str, log: Log, timeout_s: float) -> None:
    """A finished RayJob of the same name would swallow the new apply (KubeRay does not rerun a job whose
    spec changes), so it goes first; the run folder keeps its finished steps, so the new job resumes."""
    dyn.delete(resource, name=name, namespace=namespace, propagation_policy="Foreground")
    deadline = time.monotonic() + timeout_s
    while _get(dyn, resource, name, namespace) is not None:
        if time.monotonic() > deadline:
            raise K8sError(
                f"RayJob {namespace}/{name} is still being deleted after {timeout_s:.0f} s; retry later"
            )
        time.sleep(0.5)
    log(f"deleted the finished RayJob {namespace}/{name} (its run folder stays; the new job resumes from it)")


def _state(status: dict[str, Any]) -> tuple[str, str]:
    return status.get("jobDeploymentStatus") or "", status.get("jobStatus") or ""


def follow_rayjob(
    dyn: Any,
    name: str,
    namespace: str,
    log: Log = print,
    poll_s: float = 5.0,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Print each change of the RayJob's deployment/job status until KubeRay is done with it; returns the
    final status."""
    resource = _resource(dyn, "ray.io/v1", "RayJob")
    deadline = time.monotonic() + timeout_s if timeout_s else None
    last: tuple[str, str] | None = None
    while True:
        obj = _get(dyn, resource, name, namespace)
        if obj is None:
            raise K8sError(f"RayJob {namespace}/{name} disappeared (deleted by someone, or its TTL ran out)")
        status = obj.get("status") or {}
        state = _state(status)
        if state != last:
            message = f" ({status['message']})" if status.get("message") else ""
            log(f"RayJob {namespace}/{name}: deployment {state[0] or 'New'}, job {state[1] or '-'}{message}")
            last = state
        if state[0] in TERMINAL:
            return status
        if deadline and time.monotonic() > deadline:
            raise K8sError(f"RayJob {namespace}/{name} still {state[0] or 'New'} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def _checked(docs: list[dict[str, Any]], what: str, api_client: Any) -> tuple[list[dict[str, Any]], Any]:
    """`docs` if they validate against their schemas (else a K8sError listing the problems, before any of
    them reaches the cluster), and a client of the cluster to apply them with."""
    problems = validate_all(docs)
    if problems:
        raise K8sError(f"the rendered {what} invalid:\n  " + "\n  ".join(problems))
    return docs, _dynamic(api_client or load_api_client())


def submit_k8s(
    wf: Workflow,
    workflow_yaml: str,
    api_client: Any = None,
    follow: bool = True,
    *,
    log: Log = print,
    poll_s: float = 5.0,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Apply the workflow's ConfigMap then its RayJob; with `follow`, wait for the end and raise K8sError
    unless the Ray job SUCCEEDED. Returns the RayJob's last status (as applied when not following)."""
    (configmap, rayjob), dyn = _checked(render_job(wf, workflow_yaml), "manifests are", api_client)
    name, namespace = rayjob["metadata"]["name"], rayjob["metadata"]["namespace"]
    rayjobs = _resource(dyn, "ray.io/v1", "RayJob")

    existing = _get(dyn, rayjobs, name, namespace)
    if existing is not None:
        state = _state(existing.get("status") or {})
        if state[0] not in TERMINAL:
            log(
                f"RayJob {namespace}/{name} is already running ({state[0] or 'New'}); following it. "
                f"To start over: kubectl -n {namespace} delete rayjob {name}"
            )
            return (
                follow_rayjob(dyn, name, namespace, log, poll_s, timeout_s)
                if follow
                else existing.get("status") or {}
            )
        _delete_finished(dyn, rayjobs, name, namespace, log, timeout_s=300)

    apply(dyn, configmap)
    log(f"applied ConfigMap {namespace}/{configmap['metadata']['name']}")
    applied = apply(dyn, rayjob)
    log(f"applied RayJob {namespace}/{name}: runs `{rayjob['spec']['entrypoint']}` on a fresh RayCluster")
    log(
        f"  kubectl -n {namespace} get rayjob {name}   |   kubectl -n {namespace} logs -f job/{name}\n"
        f"  dashboard: kubectl -n {namespace} port-forward svc/{name}-head-svc 8265"
    )
    if not follow:
        return applied.get("status") or {}
    status = follow_rayjob(dyn, name, namespace, log, poll_s, timeout_s)
    if status.get("jobStatus") != "SUCCEEDED":
        reason = status.get("reason") or status.get("message") or "see the logs above"
        raise K8sError(
            f"RayJob {namespace}/{name} ended {status.get('jobDeploymentStatus')}, "
            f"job {status.get('jobStatus') or '-'}: {reason}"
        )
    return status


def _service_ready(status: dict[str, Any]) -> bool:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return status.get("serviceStatus") == "Running"  # KubeRay before conditions


def apply_service(
    wf: Workflow,
    checkpoint_uri: str,
    api_client: Any = None,
    wait: bool = True,
    *,
    log: Log = print,
    poll_s: float = 10.0,
    timeout_s: float = 1800.0,
) -> str:
    """Serve `checkpoint_uri` as a RayService (the deploy step on Kubernetes); returns the in-cluster URL."""
    (service,), dyn = _checked([render_service(wf, checkpoint_uri)], "RayService is", api_client)
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    apply(dyn, service)
    url = service_url(wf)
    log(f"applied RayService {namespace}/{name}; it will serve at {url}")
    if not wait:
        return url
    resource = _resource(dyn, "ray.io/v1", "RayService")
    deadline = time.monotonic() + timeout_s
    while True:
        status = (_get(dyn, resource, name, namespace) or {}).get("status") or {}
        if _service_ready(status):
            log(f"RayService {namespace}/{name} is ready")
            return url
        if time.monotonic() > deadline:
            raise K8sError(
                f"RayService {namespace}/{name} not ready after {timeout_s:.0f} s; "
                f"see kubectl -n {namespace} describe rayservice {name}"
            )
        time.sleep(poll_s)
