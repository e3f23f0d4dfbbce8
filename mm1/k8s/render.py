"""Render a workflow into KubeRay manifests: a ConfigMap + RayJob that run it, a RayService that serves it.

The cluster section of the workflow file is the only place cluster shape is declared; nothing here is
hand-copied YAML. `mm1.k8s.validate` checks the output against the KubeRay v1.7.0 CRDs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from mm1.config import ClusterConfig, Workflow, dump, with_overrides
from mm1.k8s.names import configmap_name, job_name, labels, service_name
from mm1.k8s.pods import (
    WORKFLOW_DIR,
    WORKFLOW_FILE,
    PodContext,
    RenderError,
    Storage,
    container_security,
    head_group,
    storage_for,
    submitter_template,
    worker_group,
)

__all__ = [
    "RenderError",
    "render_job",
    "render_service",
    "render_all",
    "dump_all",
    "effective_workflow",
    "service_url",
]

# The Ray in the image (Dockerfile's base); KubeRay needs it to enable token auth (>= 2.52).
RAY_VERSION = "2.60.0"
ENTRYPOINT = f"mm1 run --here {WORKFLOW_DIR}/{WORKFLOW_FILE}"
SOURCE_FILE = "source.yaml"  # the file as the user wrote it, kept beside the effective one for provenance
SERVE_APP = "mm1"
SERVE_IMPORT_PATH = "services.openai_app:build_app"
# Until the schema names it, the API key (deploy.api_key_env) comes from this Secret and key.
API_KEY_SECRET = "mm1-api-key"
API_KEY_SECRET_KEY = "api-key"


def _metadata(name: str, wf: Workflow, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": wf.cluster.namespace, "labels": labels(wf.name, component)}


def effective_workflow(wf: Workflow, storage: Storage) -> Workflow:
    """The workflow as it runs inside the cluster: runs under the pods' storage root, and the deploy step
    hands serving to a RayService instead of keeping the job alive."""
    overrides: dict[str, Any] = {"deploy.keep_serving": False}
    if storage.root != wf.storage.root:
        overrides["storage.root"] = storage.root
    return with_overrides(wf, overrides)


def _positive_or_omit(value: int, key: str) -> int | None:
    if value < 0:
        raise RenderError(f"{key}: must be >= 0 (0 = no deadline), got {value}")
    return value or None


def job_lifecycle(cluster: ClusterConfig) -> dict[str, Any]:
    """Retries, deadlines and clean-up of the RayJob. A retry (backoffLimit) deletes the RayCluster and runs the
    same entrypoint on a new one; since the run folder is on the PVC or the object store, never on the head's
    disk, the rerun skips finished steps and training resumes from its last checkpoint. KubeRay does not retry
    a deadline that ran out; the deadlines count per attempt."""
    if cluster.backoff_limit < 0:
        raise RenderError(
            f"cluster.backoff_limit: must be >= 0 (0 = no retries), got {cluster.backoff_limit}"
        )
    fields: dict[str, Any] = {
        "shutdownAfterJobFinishes": cluster.shutdown_after_job_finishes,
        "backoffLimit": cluster.backoff_limit,
    }
    ttl = cluster.ttl_seconds_after_finished
    if ttl < 0:
        raise RenderError(f"cluster.ttl_seconds_after_finished: must be >= 0 (0 = at once), got {ttl}")
    if ttl and not cluster.shutdown_after_job_finishes:
        raise RenderError(
            "cluster.ttl_seconds_after_finished: KubeRay only allows it with shutdown_after_job_finishes: true"
        )
    if ttl:
        fields["ttlSecondsAfterFinished"] = ttl
    deadlines = {
        "activeDeadlineSeconds": ("cluster.active_deadline_seconds", cluster.active_deadline_seconds),
        "preRunningDeadlineSeconds": (
            "cluster.pre_running_deadline_seconds",
            cluster.pre_running_deadline_seconds,
        ),
    }
    for field, (key, value) in deadlines.items():
        seconds = _positive_or_omit(value, key)
        if seconds:
            fields[field] = seconds
    return fields


def ray_cluster_spec(
    ctx: PodContext, serve_port: int | None = None, autoscale: bool = False
) -> dict[str, Any]:
    cluster = ctx.wf.cluster
    seen: set[str] = set()
    for i, group in enumerate(cluster.worker_groups):
        if group.name in seen:
            raise RenderError(f"cluster.worker_groups[{i}].name: '{group.name}' is used by another group")
        seen.add(group.name)
    groups = [worker_group(ctx, group, i) for i, group in enumerate(cluster.worker_groups)]
    # The in-tree autoscaler moves each group between its min and max replicas.
    autoscale = autoscale or any(g.min_replicas != g.max_replicas for g in cluster.worker_groups)
    spec: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": autoscale,
        "headGroupSpec": head_group(ctx, serve_port),
    }
    if autoscale:
        # KubeRay injects the autoscaler container into the head pod; it runs as non-root like the rest.
        spec["autoscalerOptions"] = {"securityContext": container_security()}
    if groups:
        spec["workerGroupSpecs"] = groups
    if cluster.ray_token_secret:
        # KubeRay then uses this Secret (key auth_token) for every Ray container and for its own dashboard calls.
        spec["authOptions"] = {"mode": "token", "secretName": cluster.ray_token_secret}
    return spec


def render_job(wf: Workflow, workflow_yaml: str) -> list[dict[str, Any]]:
    """A ConfigMap with the workflow file and a RayJob whose entrypoint runs it on a fresh RayCluster."""
    cluster = wf.cluster
    storage = storage_for(wf)
    effective = effective_workflow(wf, storage)
    cm_name = configmap_name(wf.name)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(cm_name, wf, "workflow"),
        "data": {WORKFLOW_FILE: dump(effective), SOURCE_FILE: workflow_yaml},
    }
    ctx = PodContext(wf, storage, labels(wf.name, "ray"), workflow_configmap=cm_name)
    # The entrypoint and the mounted file are the same for every render and every attempt (no timestamps, no
    # fixed jobId: KubeRay makes a fresh submission id per attempt), so a retry or a resubmit reruns exactly this.
    spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "submissionMode": "K8sJobMode",
        **job_lifecycle(cluster),
        # Shown by `ray job list` and the dashboard, as for `mm1 submit --address`.
        "metadata": {
            "workflow": wf.name,
            "run_dir": f"{storage.root.rstrip('/')}/{wf.run_name}",
            "workflow_file": f"configmap/{cm_name}",
        },
        "rayClusterSpec": ray_cluster_spec(ctx),
        "submitterPodTemplate": submitter_template(ctx),
    }
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(job_name(wf.name), wf, "workflow-run"),
        "spec": spec,
    }
    return [configmap, rayjob]


def serve_config(wf: Workflow, checkpoint_uri: str, deployment_name: str | None = None) -> dict:
    """Ray Serve's multi-application config (the schema `serve deploy` and serveConfigV2 take).

    The app's arguments are the serving settings (services.settings.ServeSettings, the same object the local
    deploy step builds), which carry replicas, autoscaling and GPUs per replica for `build_app` to apply.
    With `deployment_name`, the same sizing is also written as a Serve-level override of that deployment.
    """
    from services.openai_app import deployment_options
    from services.settings import ServeSettings

    deploy = wf.deploy
    settings = ServeSettings.from_deploy(deploy, checkpoint_uri, deploy.model_name or wf.name)
    app: dict[str, Any] = {
        "name": SERVE_APP,
        "route_prefix": deploy.route_prefix,
        "import_path": SERVE_IMPORT_PATH,
        "args": settings.to_args(),
    }
    if deployment_name:
        deployment: dict[str, Any] = {"name": deployment_name}
        if settings.autoscaling:
            deployment["autoscaling_config"] = settings.autoscaling_config
        else:
            deployment["num_replicas"] = settings.num_replicas
        # Serve replaces the code's ray_actor_options with this one whole: keep what build_app sets (a CPU
        # replica's runtime_env) beside the GPU count.
        actor_options = {"num_gpus": settings.gpus_per_replica}
        actor_options.update(deployment_options(settings)["ray_actor_options"])
        deployment["ray_actor_options"] = actor_options
        app["deployments"] = [deployment]
    # Inside a pod Serve must listen on all interfaces; deploy.host is for the laptop case.
    return {"http_options": {"host": "0.0.0.0", "port": deploy.port}, "applications": [app]}


def _check_gpus(wf: Workflow) -> None:
    need = wf.deploy.gpus_per_replica
    have = max((g.gpus for g in wf.cluster.worker_groups), default=0)
    if need > 0 and have < need:
        raise RenderError(
            f"deploy.gpus_per_replica: a replica needs {need} GPU(s) but no worker group in "
            f"cluster.worker_groups has that many (largest: {have})"
        )


def render_service(wf: Workflow, checkpoint_uri: str, deployment_name: str | None = None) -> dict[str, Any]:
    """A RayService serving `checkpoint_uri` behind the OpenAI-compatible app, sized by wf.deploy."""
    if not checkpoint_uri:
        raise RenderError("checkpoint_uri: the RayService needs the winner's checkpoint")
    _check_gpus(wf)
    deploy = wf.deploy
    extra_env: tuple[dict[str, Any], ...] = ()
    if deploy.api_key_env:
        extra_env = (
            {
                "name": deploy.api_key_env,
                "valueFrom": {"secretKeyRef": {"name": API_KEY_SECRET, "key": API_KEY_SECRET_KEY}},
            },
        )
    ctx = PodContext(wf, storage_for(wf), labels(wf.name, "serving"), extra_env=extra_env)
    config = serve_config(wf, checkpoint_uri, deployment_name)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _metadata(service_name(wf.name), wf, "serving"),
        "spec": {
            "serveConfigV2": yaml.safe_dump(config, sort_keys=False),
            "rayClusterConfig": ray_cluster_spec(
                ctx, serve_port=deploy.port, autoscale=deploy.autoscaling is not None
            ),
        },
    }


def service_url(wf: Workflow) -> str:
    """The in-cluster URL of the served app (KubeRay names the Serve Service `<RayService>-serve-svc`)."""
    host = f"{service_name(wf.name)}-serve-svc.{wf.cluster.namespace}.svc.cluster.local"
    return f"http://{host}:{wf.deploy.port}{wf.deploy.route_prefix.rstrip('/')}"


def render_all(wf: Workflow, workflow_yaml: str, checkpoint_uri: str | None = None) -> list[dict[str, Any]]:
    """Everything one workflow needs on the cluster: ConfigMap + RayJob, and the RayService once a
    checkpoint is known."""
    docs = render_job(wf, workflow_yaml)
    if checkpoint_uri:
        docs.append(render_service(wf, checkpoint_uri))
    return docs


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the workflow file, serveConfigV2) as readable `|` blocks; no anchors/aliases, so
    each container reads whole on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_all(docs: Iterable[dict[str, Any]]) -> str:
    """A multi-document YAML stream for `kubectl apply --server-side -f -`."""
    return yaml.dump_all(list(docs), Dumper=_Dumper, sort_keys=False, explicit_start=True)
