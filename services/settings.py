"""What one served application needs to know: the checkpoint, its public name, limits and scaling.

The same settings come from three places: a workflow's `deploy` section (local deploy step), the arguments of
`build_app` (a RayService's serveConfigV2, where every value arrives as YAML), and `mm1 serve`. They all end
in `ServeSettings`, so the replica sees one typed object whatever started it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mm1.config import DeployConfig


@dataclass(frozen=True)
class ServeSettings:
    # A local folder holding save_pretrained model + processor (mm1.model.loading.load_for_inference).
    checkpoint: str
    # Name the model answers to (GET /v1/models, the `model` field of requests).
    model_name: str = "mm1"
    num_replicas: int = 1
    # {"min_replicas", "max_replicas", "target_ongoing_requests"}; overrides num_replicas when set.
    autoscaling: dict[str, Any] | None = None
    gpus_per_replica: float = 0
    # Dynamic batching: concurrent requests are decoded together, up to this many (1 = no batching) ...
    max_batch_size: int = 16
    # ... after waiting at most this long for others to share its prefill. 0: requests that arrive while the
    # loop is decoding queue up and join together at the next step anyway; a wait only delays a lone request.
    batch_wait_timeout_s: float = 0.0
    # Streaming pace: after a chunk, the next leaves once this long has passed, with every token decoded
    # meanwhile (the first token and the end are never held). Each chunk crosses replica -> ingress -> client,
    # which costs more than a small model's decode step; 0 = a chunk per step with visible text.
    stream_interval_s: float = 0.02
    # Requests a replica accepts at once (0 = 2 x max_batch_size: one batch decoding, the next one filling).
    max_ongoing_requests: int = 0
    # Environment variable holding the API key; unset or empty = no key required.
    api_key_env: str = ""
    max_images: int = 4
    max_image_bytes: int = 10_000_000
    max_image_pixels: int = 16_000_000
    # Local image paths are read only under this folder (empty = none).
    image_dir: str = ""
    # http(s) image URLs only from these hosts (empty = none), fetched with this timeout.
    allowed_image_hosts: tuple[str, ...] = field(default_factory=tuple)
    image_fetch_timeout_s: float = 5.0
    # max_tokens when a request gives none (capped by what is left of the context).
    default_max_tokens: int = 256
    # torch intra-op threads per replica (0 = torch's default, which Ray sets from the replica's CPUs).
    torch_threads: int = 0
    # "cpu", "cuda", "cuda:1", ...; empty = cuda when the replica has GPUs, else cpu.
    device: str = ""

    def __post_init__(self) -> None:
        # Settings may come from YAML (serveConfigV2 args): coerce lists and fail here, naming the value.
        object.__setattr__(self, "allowed_image_hosts", tuple(self.allowed_image_hosts or ()))
        if not self.checkpoint:
            raise ValueError("serve settings need `checkpoint`: a folder with the model and its processor")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.stream_interval_s < 0:
            raise ValueError(f"stream_interval_s must be >= 0, got {self.stream_interval_s}")
        if self.max_images < 0 or self.max_image_bytes < 1 or self.max_image_pixels < 1:
            raise ValueError(
                f"image limits must be positive: max_images={self.max_images}, "
                f"max_image_bytes={self.max_image_bytes}, max_image_pixels={self.max_image_pixels}"
            )
        if self.num_replicas < 1 and not self.autoscaling:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")

    @property
    def torch_device(self) -> str:
        return self.device or ("cuda" if self.gpus_per_replica > 0 else "cpu")

    @property
    def replica_ongoing_requests(self) -> int:
        return self.max_ongoing_requests or max(2 * self.max_batch_size, 8)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeSettings:
        """From `build_app` arguments; unknown keys are an error (a typo must not silently fall back)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown serve argument(s) {unknown}; known: {sorted(known)}")
        return cls(**args)

    @classmethod
    def from_deploy(cls, deploy: DeployConfig, checkpoint: str, model_name: str) -> ServeSettings:
        autoscaling = None
        if deploy.autoscaling is not None:
            a = deploy.autoscaling
            autoscaling = {
                "min_replicas": a.min_replicas,
                "max_replicas": a.max_replicas,
                "target_ongoing_requests": a.target_ongoing_requests,
            }
        return cls(
            checkpoint=checkpoint,
            model_name=model_name,
            num_replicas=deploy.num_replicas,
            autoscaling=autoscaling,
            gpus_per_replica=deploy.gpus_per_replica,
            max_batch_size=deploy.max_batch_size,
            batch_wait_timeout_s=deploy.batch_wait_timeout_s,
            stream_interval_s=deploy.stream_interval_s,
            api_key_env=deploy.api_key_env,
            max_images=deploy.max_images,
            max_image_bytes=deploy.max_image_bytes,
            max_image_pixels=deploy.max_image_pixels,
            image_dir=deploy.image_dir,
            allowed_image_hosts=tuple(deploy.allowed_image_hosts),
            image_fetch_timeout_s=deploy.image_fetch_timeout_s,
        )

    def to_args(self) -> dict[str, Any]:
        """The `build_app` arguments that recreate these settings (plain data, for YAML)."""
        args = asdict(self)
        args["allowed_image_hosts"] = list(self.allowed_image_hosts)
        return args
