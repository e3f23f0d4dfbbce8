"""Where a workflow runs and keeps its files: the `storage` and `cluster` sections of a workflow and their rules.

The cluster section is the only place cluster shape is declared; the RayJob and RayService manifests are
rendered from it (mm1.k8s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mm1 import storage
from mm1.config_validate import SchemaChecker, choice


@dataclass
class StorageConfig:
    # Root under which each run gets its own folder: a local path or a pyarrow filesystem URI (s3://bucket/x).
    root: str = "runs"
    # The run folder's name; empty means the workflow's name. Same name + same root = resume.
    run_name: str = ""


@dataclass
class Toleration:
    key: str = MISSING
    operator: str = "Exists"
    value: str = ""
    effect: str = ""


@dataclass
class NodeGroup:
    name: str = "workers"
    replicas: int = 1
    min_replicas: int = 0
    max_replicas: int = 4
    cpus: float = 4
    gpus: int = 0  # becomes an nvidia.com/gpu limit on Kubernetes
    memory: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)


@dataclass
class HeadNode:
    cpus: float = 2
    memory: str = "8Gi"
    # 0 keeps the head free of training work on a real cluster.
    num_cpus_for_tasks: float | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)


@dataclass
class ClusterConfig:
    # local: an in-process Ray; ray: a Ray cluster via the Job Submission API; k8s: a KubeRay RayJob.
    backend: str = choice("local", "local", "ray", "k8s")
    # Ray dashboard address for backend=ray (http://HOST:8265).
    address: str = ""
    # Local Ray: CPUs to give the embedded instance (null = all of this machine's).
    num_cpus: int | None = None
    dashboard_port: int = 8265
    # The one image for head, workers, jobs and serving.
    image: str = "mm1-platform:latest"
    namespace: str = "mm1"
    service_account: str = "mm1-runner"
    head: HeadNode = field(default_factory=HeadNode)
    worker_groups: list[NodeGroup] = field(default_factory=lambda: [NodeGroup()])
    # Where runs live on Kubernetes: a PVC name (mounted at storage_mount) or empty when storage.root is s3://.
    pvc: str = "mm1-runs"
    storage_mount: str = "/mnt/runs"
    # Secrets are referenced, never inlined: the Ray auth token and (for s3) storage credentials.
    ray_token_secret: str = "ray-auth-token"
    # For an s3:// storage.root: the Secret every pod reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and, if
    # present, AWS_SESSION_TOKEN) from; empty = no keys (the service account's IAM role, e.g. IRSA).
    storage_secret: str = "mm1-s3"
    # S3-compatible stores (MinIO, Ceph, R2...): endpoint URL and region given to every pod as AWS_ENDPOINT_URL
    # and AWS_REGION; empty = AWS itself (the bucket's region is looked up).
    s3_endpoint: str = ""
    s3_region: str = ""
    # Kubernetes secrets holding registry credentials for the image.
    image_pull_secrets: list[str] = field(default_factory=list)
    # Extra environment on the head pod (e.g. RAY_GRAFANA_HOST so the dashboard embeds Grafana).
    head_env: dict[str, str] = field(default_factory=dict)
    # Seconds a finished RayJob (and its cluster) is kept before deletion (0 = at once).
    ttl_seconds_after_finished: int = 0
    # Retries of a failed RayJob (a lost head pod included), each on a fresh RayCluster running the same
    # entrypoint: finished steps are skipped and training resumes from its last checkpoint.
    backoff_limit: int = 2
    active_deadline_seconds: int = 86400
    pre_running_deadline_seconds: int = 1800
    shutdown_after_job_finishes: bool = True


# Object-store variables cluster.head_env must not set: credentials are read from a Secret, never written into
# manifests, and endpoint/region must reach every pod, not only the head. Variable -> where it belongs.
S3_ENV_OWNERS = {
    "AWS_ACCESS_KEY_ID": "the Secret named by cluster.storage_secret",
    "AWS_SECRET_ACCESS_KEY": "the Secret named by cluster.storage_secret",
    "AWS_SESSION_TOKEN": "the Secret named by cluster.storage_secret",
    "AWS_ENDPOINT_URL": "cluster.s3_endpoint",
    "AWS_REGION": "cluster.s3_region",
    "AWS_DEFAULT_REGION": "cluster.s3_region",
}


def check_storage(section: StorageConfig, checker: SchemaChecker) -> None:
    if not section.root:
        checker.fail("storage.root", "must be a local path or a filesystem URI such as s3://bucket/prefix")


def check_cluster(cluster: ClusterConfig, checker: SchemaChecker) -> None:
    """Rules of the cluster section; literal credentials are refused, naming the key."""
    fail = checker.fail
    if cluster.backend == "ray" and not cluster.address:
        fail("cluster.address", "backend 'ray' needs the dashboard address, e.g. http://HOST:8265")
    secret = cluster.storage_secret or "mm1-s3"
    for key in cluster.head_env:
        owner = S3_ENV_OWNERS.get(key.upper())
        if owner and owner.startswith("the Secret"):
            fail(
                f"cluster.head_env.{key}",
                f"credentials are never written into manifests; remove it and keep {key} in {owner} "
                f"('{secret}'): kubectl -n {cluster.namespace} create secret generic {secret} "
                "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=... (k8s/README.md)",
            )
        if owner:
            fail(f"cluster.head_env.{key}", f"set {owner} instead: it reaches every pod, not only the head")
    if cluster.s3_endpoint and not storage.is_http(cluster.s3_endpoint):
        fail("cluster.s3_endpoint", f"'{cluster.s3_endpoint}' must be an http:// or https:// URL")
    if cluster.backoff_limit < 0:
        fail("cluster.backoff_limit", f"must be >= 0 (0 = no retries), got {cluster.backoff_limit}")
