"""The workflow schema: typed dataclasses used as OmegaConf structured configs.

`load(path, overrides)` reads a workflow YAML file, merges command-line overrides (`pretrain.steps=50`) and
returns a typed `Workflow`. Every user mistake becomes one `ConfigError` that names the file, the line and the
key path (mm1/config_validate.py); nothing here raises a bare traceback for bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, OmegaConf

from mm1 import storage
from mm1.config_validate import ConfigError, SchemaChecker, line_index

__all__ = ["ConfigError", "Workflow", "load", "loads", "dump", "to_dict", "with_overrides"]


def choice(default: str, *options: str) -> Any:
    """A string field restricted to `options` (validated with a did-you-mean by mm1.config_validate)."""
    assert default in options
    return field(default=default, metadata={"choices": options})


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


@dataclass
class ShapesConfig:
    # Generated when no corpora are named: scenes per corpus, and the seed (eval uses a disjoint seed).
    caption_samples: int = 2000
    interleaved_docs: int = 600
    text_samples: int = 800
    sft_samples: int = 2000
    # Question/answer turns per SFT conversation, drawn uniformly in [min, max] (a scene has 5 to 7 questions,
    # caption included): more turns per image train more answers per token of image features.
    sft_min_turns: int = 1
    sft_max_turns: int = 3
    # Where the turns come from: "per-type" = one question of each type that applies (5 to 7, caption
    # included); "every" = every question the table allows (each unique shape's colour, each unique colour's
    # shape, count and existence of each present kind and as many absent ones: up to 26 for four objects).
    # Measured on the Shapes study's data (2026-11-25), "every" with 6-12 turns was not better at equal steps
    # (mean of colour_of/shape_of/exists/count_all after 600 SFT steps: 0.577 vs 0.637 for per-type, 4-7).
    sft_questions: str = choice("per-type", "per-type", "every")
    seed: int = 0


@dataclass
class CorporaConfig:
    # Paths or globs (local or pyarrow URIs). Empty everywhere = generate the Shapes corpus.
    interleaved: list[str] = field(default_factory=list)  # OBELICS-style parquet
    captions: list[str] = field(default_factory=list)  # webdataset .tar shards
    text: list[str] = field(default_factory=list)  # JSON lines or parquet with a `text` column
    sft: list[str] = field(default_factory=list)  # LLaVA JSON
    # Folder that LLaVA `image` paths are relative to (default: the JSON file's folder).
    sft_image_root: str = ""


@dataclass
class MixtureConfig:
    interleaved: float = 0.45
    captions: float = 0.45
    text: float = 0.10


@dataclass
class DataConfig:
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    corpora: CorporaConfig = field(default_factory=CorporaConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    # A Hugging Face tokenizer name or path; empty = train a byte-level BPE on the corpus text.
    tokenizer: str = ""
    vocab_size: int = 512
    # The ingest step fails when more than this fraction of records is corrupt.
    max_bad_fraction: float = 0.05
    # Download http(s) image entries of interleaved documents (off: they are counted and skipped).
    download_images: bool = False
    seed: int = 0


@dataclass
class PackingConfig:
    """How the training stages pack ingest's samples into rows (read by pretrain and SFT, not by ingest)."""

    # Packed sequence length and the most images one packed sequence may hold.
    seq_len: int = 256
    max_images: int = 4
    # Keep a stage's packed rows in Ray's object store after packing them once, so training passes do not
    # re-read, re-pack and re-decode beside the trainer (3% more steps/s measured on 2 CPUs). auto: when
    # the estimated rows fit in a quarter of the object store (shared by the candidates training at once).
    # How rows are held, not what they are: it enters no fingerprint.
    materialize: str = choice("auto", "auto", "always", "never")


@dataclass
class ConnectorConfig:
    type: str = choice("c-abstractor", "avgpool", "attnpool", "c-abstractor")
    num_tokens: int = 16


@dataclass
class ModelConfig:
    preset: str = choice(
        "tiny", "tiny", "tiny-cnn", "mm1-3b", "mm1-7b", "mm1-30b", "mm1-3b-moe", "mm1-7b-moe"
    )
    # Encoder input resolution in pixels.
    image_size: int = 64
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    # Image splitting: grid x grid crops + an overview (1 = off).
    image_grid: int = 1
    # Hugging Face vision tower / causal LM by name or path; empty = built from the preset with random weights.
    vision: str = ""
    llm: str = ""
    # Dotted overrides into the preset (e.g. {"text_config.num_hidden_layers": 2}).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    enabled: bool = True
    steps: int = 200
    # Sequences per optimizer step, summed over workers and accumulation.
    batch_size: int = 16
    grad_accum: int = 1
    # Peak LR; null = MM1's scaling law over non-embedding parameters.
    lr: float | None = None
    # Weight decay; null = 0.1 * lr (MM1).
    weight_decay: float | None = None
    warmup_steps: int = 20
    # Cosine decay ends at this fraction of the peak.
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    # Parts not trained in this stage: vision | connector | llm.
    freeze: list[str] = field(default_factory=list)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    num_workers: int = 1
    cpus_per_worker: float = 1
    # How Ray places the workers: PACK fills a node first, SPREAD puts them on different nodes.
    placement_strategy: str = choice("PACK", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
    use_gpu: bool = False
    strategy: str = choice("ddp", "ddp", "fsdp")
    # bf16 autocast is for GPUs; on CPU keep fp32 (bf16 is emulated there, ~400x slower).
    precision: str = choice("fp32", "fp32", "bf16")
    activation_checkpointing: bool = False
    # Worker failures tolerated by Ray Train before the fit fails.
    max_failures: int = 2
    log_every: int = 10
    seed: int = 0
    # Packed rows each worker holds to shuffle its stream, reshuffled every pass (seed + pass): without it
    # every epoch replays the same batches in the same order. Memory: rows x (ids + images) per worker.
    # 0 = the dataset's fixed order.
    shuffle_buffer: int = 1024


@dataclass
class EvaluateConfig:
    enabled: bool = True
    # shapes-vqa | shapes-caption | shapes-kshot | coco-caption | vqav2
    benchmarks: list[str] = field(default_factory=lambda: ["shapes-vqa", "shapes-caption"])
    # Held-out Shapes scenes (a seed never used for training) and questions drawn from them.
    num_scenes: int = 200
    num_questions: int = 500
    kshot: list[int] = field(default_factory=lambda: [0, 4, 8])
    seed: int = 1_000_003
    batch_size: int = 32
    max_new_tokens: int = 24
    num_actors: int = 1
    # Which checkpoints of each candidate to evaluate.
    checkpoints: str = choice("last", "last", "all")
    # Real benchmark files, when a workflow points at them.
    coco_annotations: str = ""
    coco_images: str = ""
    vqav2_questions: str = ""
    vqav2_annotations: str = ""
    vqav2_images: str = ""


@dataclass
class SelectConfig:
    metric: str = "shapes-vqa/overall"
    mode: str = choice("max", "max", "min")


@dataclass
class AutoscalingConfig:
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8


@dataclass
class DeployConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    # Name the model is served under (GET /v1/models); empty = the workflow's name.
    model_name: str = ""
    num_replicas: int = 1
    autoscaling: AutoscalingConfig | None = None
    gpus_per_replica: float = 0
    max_batch_size: int = 16
    # How long a request waits for others to share its prefill. Decoding batches continuously: requests that
    # arrive while it decodes join at the next step without any wait, so 0 only spares a lone request the wait.
    batch_wait_timeout_s: float = 0.0
    # Streaming pace: a streamed answer sends a chunk at most every this many seconds (the first token and
    # the end at once), carrying every token decoded meanwhile; 0 = a chunk per decode step.
    stream_interval_s: float = 0.02
    # The HTTP ingress in front of the replicas: haproxy (replicas serve HTTP, HAProxy forwards to them), proxy
    # (Serve's Python proxy actor), or auto (haproxy where its binary is, as ray[serve] brings it on Linux).
    # Set when Ray starts (services.ingress): a local Ray takes it from here, clusters from their pods' env.
    ingress: str = choice("auto", "auto", "haproxy", "proxy")
    # Environment variable holding the API key; unset or empty variable = no key required.
    api_key_env: str = ""
    # On Kubernetes: the Secret (key `api-key`) the serving pods read the API key from (empty = no key).
    api_key_secret: str = ""
    max_images: int = 4
    max_image_bytes: int = 10_000_000
    max_image_pixels: int = 16_000_000
    # Local image paths are read only under this folder (empty = no local paths).
    image_dir: str = ""
    # http(s) image URLs only from these hosts (empty = none), fetched with this timeout.
    allowed_image_hosts: list[str] = field(default_factory=list)
    image_fetch_timeout_s: float = 5
    # Keep serving after the workflow ends until Ctrl-C (tests and CI set false).
    keep_serving: bool = True


@dataclass
class ReportConfig:
    enabled: bool = True


@dataclass
class Workflow:
    # Names the run folder, the Ray job and the served model.
    name: str = MISSING
    description: str = ""
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, lr=1e-3, freeze=[]))
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # Grid of candidates: dotted key -> list of values (e.g. {"model.connector.type": [avgpool, c-abstractor]}).
    sweep: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        return self.storage.run_name or self.name


# ---------------------------------------------------------------------------------------------- loading

BENCHMARKS = ("shapes-vqa", "shapes-caption", "shapes-kshot", "coco-caption", "vqav2")
FREEZABLE = ("vision", "connector", "llm")
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


def load(path: str | Path, overrides: Sequence[str] = ()) -> Workflow:
    """Read, validate and type a workflow file; `overrides` are `dotted.key=value` strings (YAML values)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            source, "", f"cannot read the workflow file ({exc.__class__.__name__}: {exc})"
        ) from None
    return loads(text, source, overrides)


def loads(text: str, source: str = "<workflow>", overrides: Sequence[str] = ()) -> Workflow:
    try:
        lines = line_index(text)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, "", f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            source,
            "",
            "the top level must be a mapping of sections (name, data, model, ...)",
            lines.get("", 1),
        )
    overridden = apply_overrides(document, overrides, source)
    checker = SchemaChecker(source, lines, overridden)
    check_moved_keys(document, checker)
    checker.check_dataclass(document, Workflow, "")
    workflow = _to_workflow(document)
    check_semantics(workflow, checker)
    return workflow


# Keys that moved to another section: the old spelling gets an error that names the new one.
MOVED_KEYS = {
    "data.seq_len": "packing.seq_len",
    "data.max_images": "packing.max_images",
    "data.materialize": "packing.materialize",
}


def check_moved_keys(document: dict, checker: SchemaChecker) -> None:
    sweep = document.get("sweep") if isinstance(document.get("sweep"), dict) else {}
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".", 1)
        if isinstance(document.get(section), dict) and key in document[section]:
            checker.fail(old, f"moved to {new}: write it under `{new.split('.')[0]}:`")
        if old in sweep:
            checker.fail(f"sweep.{old}", f"moved to {new}: sweep over {new}")


def apply_overrides(document: dict, overrides: Sequence[str], source: str) -> dict[str, str]:
    """Set each `a.b.c=value` into `document`; returns key path -> the override text (for error messages)."""
    applied: dict[str, str] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                "command line", override, "an override must look like KEY=VALUE (e.g. pretrain.steps=50)"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = document
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        applied[key] = override
    return applied


def _to_workflow(document: dict) -> Workflow:
    merged = OmegaConf.merge(OmegaConf.structured(Workflow), OmegaConf.create(document))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_dict(workflow: Workflow) -> dict[str, Any]:
    """Plain data (for fingerprints, the run folder's copy, and the Kubernetes ConfigMap)."""
    return OmegaConf.to_container(OmegaConf.structured(workflow), resolve=True)  # type: ignore[return-value]


def dump(workflow: Workflow) -> str:
    return yaml.safe_dump(to_dict(workflow), sort_keys=False)


def with_overrides(workflow: Workflow, overrides: dict[str, Any]) -> Workflow:
    """A copy of `workflow` with dotted-key overrides applied and validated (used by the sweep)."""
    document = to_dict(workflow)
    applied = apply_overrides(
        document,
        [
            f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in overrides.items()
        ],
        "sweep",
    )
    checker = SchemaChecker("sweep", {}, applied)
    checker.check_dataclass(document, Workflow, "")
    return _to_workflow(document)


def check_cluster_storage(cluster: ClusterConfig, checker: SchemaChecker) -> None:
    """Object-store settings of the cluster section; literal credentials are refused, naming the key."""
    fail = checker.fail
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


def check_semantics(wf: Workflow, checker: SchemaChecker) -> None:
    """Rules that types alone cannot express; each names the offending key."""
    fail = checker.fail
    if not wf.name.strip():
        fail("name", "must not be empty")
    if not wf.storage.root:
        fail("storage.root", "must be a local path or a filesystem URI such as s3://bucket/prefix")
    weights = wf.data.mixture
    if min(weights.interleaved, weights.captions, weights.text) < 0 or (
        weights.interleaved + weights.captions + weights.text <= 0
    ):
        fail("data.mixture", "weights must be >= 0 and sum to more than 0")
    turns = wf.data.shapes
    if not 1 <= turns.sft_min_turns <= turns.sft_max_turns:
        fail(
            "data.shapes.sft_min_turns",
            f"must be at least 1 and at most sft_max_turns ({turns.sft_max_turns}), got {turns.sft_min_turns}",
        )
    if wf.packing.seq_len < 32:
        fail("packing.seq_len", f"must be at least 32, got {wf.packing.seq_len}")
    if wf.packing.max_images < 1:
        fail("packing.max_images", f"must be at least 1, got {wf.packing.max_images}")
    if not 0 <= wf.data.max_bad_fraction <= 1:
        fail("data.max_bad_fraction", f"must be between 0 and 1, got {wf.data.max_bad_fraction}")
    for stage_name in ("pretrain", "sft"):
        stage: TrainConfig = getattr(wf, stage_name)
        for key in (
            "steps",
            "batch_size",
            "grad_accum",
            "num_workers",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            if getattr(stage, key) < 1:
                fail(f"{stage_name}.{key}", f"must be at least 1, got {getattr(stage, key)}")
        if stage.shuffle_buffer < 0:
            fail(f"{stage_name}.shuffle_buffer", f"must be 0 (off) or more rows, got {stage.shuffle_buffer}")
        if stage.batch_size % (stage.num_workers * stage.grad_accum):
            fail(
                f"{stage_name}.batch_size",
                f"{stage.batch_size} must be divisible by num_workers x grad_accum "
                f"= {stage.num_workers} x {stage.grad_accum}",
            )
        for i, part in enumerate(stage.freeze):
            if part not in FREEZABLE:
                fail(
                    f"{stage_name}.freeze[{i}]",
                    f"'{part}' is not a model part; expected one of: {', '.join(FREEZABLE)}",
                )
        if stage.precision == "bf16" and not stage.use_gpu:
            fail(
                f"{stage_name}.precision",
                "bf16 needs use_gpu: true (on CPU bf16 is emulated, ~400x slower); use fp32",
            )
        if stage.strategy == "fsdp" and not stage.use_gpu:
            fail(f"{stage_name}.strategy", "fsdp needs use_gpu: true; use ddp on CPU")
    for i, bench in enumerate(wf.evaluate.benchmarks):
        if bench not in BENCHMARKS:
            fail(
                f"evaluate.benchmarks[{i}]",
                f"unknown benchmark '{bench}'; expected one of: {', '.join(BENCHMARKS)}",
            )
    needs = {
        "coco-caption": ("coco_annotations", "coco_images"),
        "vqav2": ("vqav2_questions", "vqav2_annotations", "vqav2_images"),
    }
    for i, bench in enumerate(wf.evaluate.benchmarks):
        for key in needs.get(bench, ()):
            if not getattr(wf.evaluate, key):
                fail(f"evaluate.benchmarks[{i}]", f"benchmark '{bench}' needs evaluate.{key} (a path)")
    metric_bench = wf.select.metric.split("/", 1)[0]
    if "/" not in wf.select.metric or metric_bench not in wf.evaluate.benchmarks:
        fail(
            "select.metric",
            f"'{wf.select.metric}' must be BENCHMARK/METRIC with BENCHMARK one of evaluate.benchmarks "
            f"({', '.join(wf.evaluate.benchmarks)}), e.g. shapes-vqa/overall",
        )
    for key in ("batch_wait_timeout_s", "stream_interval_s"):
        if getattr(wf.deploy, key) < 0:
            fail(f"deploy.{key}", f"must be >= 0 seconds, got {getattr(wf.deploy, key)}")
    if wf.deploy.max_batch_size < 1:
        fail("deploy.max_batch_size", f"must be at least 1, got {wf.deploy.max_batch_size}")
    if wf.cluster.backend == "ray" and not wf.cluster.address:
        fail("cluster.address", "backend 'ray' needs the dashboard address, e.g. http://HOST:8265")
    check_cluster_storage(wf.cluster, checker)
    for key, values in wf.sweep.items():
        path = f"sweep.{key}"
        if not values:
            fail(path, "must list at least one value")
        for value in values:
            try:
                with_overrides(wf, {key: value})
            except ConfigError as exc:
                fail(path, f"value {value!r} does not fit the key '{key}': {exc.message}")
