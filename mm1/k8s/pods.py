"""Pod templates for Ray heads, workers and the job submitter, rendered from the workflow's cluster section.

Every pod runs as the image's non-root `ray` user, carries the Ray auth token by Secret reference (never a
literal), mounts the runs PVC (or, for an s3:// root, reads the object-store keys from a Secret by reference)
and, for the RayJob, the workflow file from its ConfigMap.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from mm1.config import ClusterConfig, NodeGroup, Toleration, Workflow
from mm1.errors import UserFacingError
from mm1.storage import is_remote, scheme
from services.ingress import cluster_env

# rayproject/ray images run as `ray`: uid 1000, primary group `users` (gid 100).
RAY_UID = 1000
RAY_GID = 100
# KubeRay's key in the token Secret (RAY_AUTH_TOKEN_SECRET_KEY); `authOptions.secretName` expects it too.
AUTH_TOKEN_KEY = "auth_token"
WORKFLOW_DIR = "/etc/mm1"
WORKFLOW_FILE = "workflow.yaml"
METRICS_PORT = (
    8080  # KubeRay's default --metrics-export-port; the PodMonitor scrapes the port named "metrics"
)
DASHBOARD_METRICS_PORT = 44227  # Ray's DASHBOARD_METRIC_PORT default
GCS_PORT = 6379
CLIENT_PORT = 10001

HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
SUBMITTER_CONTAINER = "ray-job-submitter"

# Keys of the object-store Secret (cluster.storage_secret); each becomes the variable of the same name.
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_SECRET_KEYS = ("AWS_SESSION_TOKEN",)  # temporary credentials only

_OPERATORS = ("Exists", "Equal")
GROUP_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")


class RenderError(UserFacingError, ValueError):
    """The workflow's cluster section cannot become valid manifests; the message names the key."""


@dataclass(frozen=True)
class Storage:
    """Where runs live as the pods see them."""

    root: str  # storage.root inside the pods
    pvc: str  # claim mounted at `mount` ("" for object storage)
    mount: str
    env: tuple[dict[str, Any], ...] = ()  # object-store keys (Secret references), endpoint and region


def _secret_var(name: str, secret: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": name}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def s3_env(cluster: ClusterConfig) -> tuple[dict[str, Any], ...]:
    """What pyarrow's S3 filesystem (and so Ray Train's storage_path) reads: the keys by Secret reference only
    (a missing Secret stops the pod from starting, loudly), the endpoint and region as plain values."""
    env: list[dict[str, Any]] = []
    secret = cluster.storage_secret
    if secret:
        if not SECRET_NAME.fullmatch(secret) or len(secret) > 253:
            raise RenderError(
                f"cluster.storage_secret: '{secret}' is not a valid Secret name (a DNS subdomain)"
            )
        env += [_secret_var(key, secret) for key in S3_SECRET_KEYS]
        env += [_secret_var(key, secret, optional=True) for key in S3_OPTIONAL_SECRET_KEYS]
    if cluster.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": cluster.s3_endpoint})
    if cluster.s3_region:
        # AWS_REGION for pyarrow (Arrow's AWS SDK), AWS_DEFAULT_REGION for boto3 and the aws CLI.
        env += [{"name": n, "value": cluster.s3_region} for n in ("AWS_REGION", "AWS_DEFAULT_REGION")]
    return tuple(env)


def storage_for(wf: Workflow) -> Storage:
    """A local storage.root can only mean the runs PVC on Kubernetes; an object-store URI is kept as is, and
    nothing of the run lives on a pod's own disk, so a replacement head finds it all."""
    cluster = wf.cluster
    if is_remote(wf.storage.root):
        env = s3_env(cluster) if scheme(wf.storage.root) == "s3" else ()
        return Storage(wf.storage.root, "", cluster.storage_mount, env)
    if not cluster.pvc:
        raise RenderError(
            f"cluster.pvc: storage.root '{wf.storage.root}' is a local path, which on Kubernetes means a "
            "PersistentVolumeClaim; name one in cluster.pvc or use an object-store root such as s3://bucket/runs"
        )
    if not cluster.storage_mount.startswith("/"):
        raise RenderError(f"cluster.storage_mount: '{cluster.storage_mount}' must be an absolute path")
    return Storage(cluster.storage_mount, cluster.pvc, cluster.storage_mount)


def cpu_quantity(cpus: float, key: str) -> str:
    """Whole CPUs as "4", fractions in millicores ("500m"), as `kubectl` would print them."""
    millis = round(cpus * 1000)
    if millis <= 0:
        raise RenderError(f"{key}: must be more than 0 CPUs, got {cpus}")
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def resources(cpus: float, memory: str, gpus: int, key: str) -> dict[str, Any]:
    """Requests equal limits (Guaranteed QoS): Ray sizes its object store and worker pools from the limits."""
    if gpus < 0:
        raise RenderError(f"{key}.gpus: must be >= 0, got {gpus}")
    requests = {"cpu": cpu_quantity(cpus, f"{key}.cpus"), "memory": str(memory)}
    limits = dict(requests)
    if gpus:
        # Extended resources are limits-only; Kubernetes copies them into requests.
        limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": requests, "limits": limits}


def tolerations(items: list[Toleration], key: str) -> list[dict[str, str]]:
    out = []
    for i, tol in enumerate(items):
        where = f"{key}.tolerations[{i}]"
        if tol.operator not in _OPERATORS:
            raise RenderError(f"{where}.operator: '{tol.operator}' must be one of {', '.join(_OPERATORS)}")
        if tol.operator == "Exists" and tol.value:
            raise RenderError(
                f"{where}.value: must be empty when operator is Exists (or use operator: Equal)"
            )
        if tol.effect not in _EFFECTS:
            raise RenderError(
                f"{where}.effect: '{tol.effect}' must be one of {', '.join(e for e in _EFFECTS if e)}"
            )
        item = {"key": tol.key, "operator": tol.operator}
        if tol.value:
            item["value"] = tol.value
        if tol.effect:
            item["effect"] = tol.effect
        out.append(item)
    return out


def auth_env(token_secret: str) -> list[dict[str, Any]]:
    """RAY_AUTH_MODE=token with the token read from the Secret. KubeRay injects the same variables when
    `authOptions` is set; declaring them keeps the pods correct on their own and the operator skips names
    that are already present."""
    if not token_secret:
        return []
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": token_secret, "key": AUTH_TOKEN_KEY}},
        },
    ]


def pod_security() -> dict[str, Any]:
    # fsGroup makes the PVC writable for the non-root user; OnRootMismatch avoids a recursive chown of a
    # large runs volume on every pod start.
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "fsGroup": RAY_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


@dataclass(frozen=True)
class PodContext:
    """What every pod of one rendered object shares."""

    wf: Workflow
    storage: Storage
    labels: dict[str, str]
    workflow_configmap: str = ""  # mounted at WORKFLOW_DIR when set (the RayJob's pods)
    extra_env: tuple[dict[str, Any], ...] = ()


def _volumes(ctx: PodContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if ctx.workflow_configmap:
        volumes.append({"name": "workflow", "configMap": {"name": ctx.workflow_configmap}})
        mounts.append({"name": "workflow", "mountPath": WORKFLOW_DIR, "readOnly": True})
    if ctx.storage.pvc:
        volumes.append({"name": "runs", "persistentVolumeClaim": {"claimName": ctx.storage.pvc}})
        mounts.append({"name": "runs", "mountPath": ctx.storage.mount})
    return volumes, mounts


def ingress_env(ctx: PodContext) -> list[dict[str, Any]]:
    """Serve's HTTP ingress (services.ingress): every Ray process of the cluster reads it when it starts."""
    return [{"name": k, "value": v} for k, v in cluster_env(ctx.wf.deploy.ingress).items()]


def container_env(ctx: PodContext, own: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Ray token, ingress, object store (every container, so any of them can read the run folder), the
    object's extras, then the container's own plain variables."""
    own_env = [{"name": k, "value": str(v)} for k, v in (own or {}).items()]
    return (
        auth_env(ctx.wf.cluster.ray_token_secret)
        + ingress_env(ctx)
        + copy.deepcopy(list(ctx.storage.env))  # copies: containers must not share (and alias) one dict
        + copy.deepcopy(list(ctx.extra_env))
        + own_env
    )


def container(
    ctx: PodContext,
    name: str,
    res: dict[str, Any],
    ports: list[dict[str, Any]],
    mounts: bool = True,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "image": ctx.wf.cluster.image,
        "imagePullPolicy": "IfNotPresent",
        "resources": res,
        "env": container_env(ctx, env),
        "securityContext": container_security(),
    }
    if ports:
        spec["ports"] = ports
    volume_mounts = _volumes(ctx)[1] if mounts else []
    if volume_mounts:
        spec["volumeMounts"] = volume_mounts
    if not spec["env"]:
        del spec["env"]
    return spec


def pod_template(
    ctx: PodContext,
    containers: list[dict[str, Any]],
    node_selector: dict[str, str],
    tols: list[dict[str, str]],
    component: str,
    restart_never: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": ctx.wf.cluster.service_account,
        "securityContext": pod_security(),
        "containers": containers,
    }
    volumes = _volumes(ctx)[0]
    if volumes:
        spec["volumes"] = volumes
    if ctx.wf.cluster.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in ctx.wf.cluster.image_pull_secrets]
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tols:
        spec["tolerations"] = tols
    if restart_never:
        spec["restartPolicy"] = "Never"
    return {"metadata": {"labels": {**ctx.labels, "app.kubernetes.io/component": component}}, "spec": spec}


def head_group(ctx: PodContext, serve_port: int | None = None) -> dict[str, Any]:
    head = ctx.wf.cluster.head
    ports = [
        {"containerPort": GCS_PORT, "name": "gcs-server"},
        {"containerPort": ctx.wf.cluster.dashboard_port, "name": "dashboard"},
        {"containerPort": CLIENT_PORT, "name": "client"},
        {"containerPort": METRICS_PORT, "name": "metrics"},
        {"containerPort": DASHBOARD_METRICS_PORT, "name": "dash-metrics"},
    ]
    if serve_port:
        ports.append({"containerPort": serve_port, "name": "serve"})
    start: dict[str, str] = {
        "dashboard-host": "0.0.0.0",
        "dashboard-port": str(ctx.wf.cluster.dashboard_port),
        "metrics-export-port": str(METRICS_PORT),
    }
    if head.num_cpus_for_tasks is not None:
        # Logical CPUs Ray may schedule on the head (0 keeps training off it); the pod's own CPUs stay as set.
        start["num-cpus"] = str(head.num_cpus_for_tasks).removesuffix(".0")
    box = container(
        ctx,
        HEAD_CONTAINER,
        resources(head.cpus, head.memory, 0, "cluster.head"),
        ports,
        env=ctx.wf.cluster.head_env,
    )
    return {
        "rayStartParams": start,
        "template": pod_template(
            ctx,
            [box],
            head.node_selector,
            tolerations(head.tolerations, "cluster.head"),
            "ray-head",
        ),
    }


def worker_group(ctx: PodContext, group: NodeGroup, index: int) -> dict[str, Any]:
    key = f"cluster.worker_groups[{index}]"
    if not GROUP_NAME.fullmatch(group.name):
        raise RenderError(
            f"{key}.name: '{group.name}' must be a DNS label (lower-case letters, digits and '-', at most 63 "
            "characters): KubeRay puts it in pod names"
        )
    if not 0 <= group.min_replicas <= group.max_replicas:
        raise RenderError(
            f"{key}: need 0 <= min_replicas <= max_replicas, got {group.min_replicas} and {group.max_replicas}"
        )
    if not group.min_replicas <= group.replicas <= group.max_replicas:
        raise RenderError(
            f"{key}.replicas: {group.replicas} must lie between min_replicas {group.min_replicas} "
            f"and max_replicas {group.max_replicas}"
        )
    ports = [{"containerPort": METRICS_PORT, "name": "metrics"}]
    box = container(ctx, WORKER_CONTAINER, resources(group.cpus, group.memory, group.gpus, key), ports)
    template = pod_template(
        ctx, [box], group.node_selector, tolerations(group.tolerations, key), "ray-worker"
    )
    template["metadata"]["labels"]["mm1.io/worker-group"] = group.name
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        # KubeRay derives num-cpus / num-gpus from the container limits.
        "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
        "template": template,
    }


def submitter_template(ctx: PodContext) -> dict[str, Any]:
    """The K8sJobMode submitter pod (`ray job submit`): KubeRay fills in its command and the token variables;
    the template only makes it non-root, with our service account and small fixed resources."""
    box = container(
        ctx,
        SUBMITTER_CONTAINER,
        {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        [],
        mounts=False,
    )
    head = ctx.wf.cluster.head
    template = pod_template(
        ctx,
        [box],
        head.node_selector,
        tolerations(head.tolerations, "cluster.head"),
        "ray-job-submitter",
        restart_never=True,
    )
    template["spec"].pop("volumes", None)  # the submitter only talks to the dashboard
    return template
