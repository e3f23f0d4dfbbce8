"""The one serving schema: what a served application is told, declared once for every way it starts.

`ServingOptions` holds the settings of the serving replicas (scaling, batching, streaming pace, API key,
image limits) and their rules (`serving_problems`). Two classes extend it:
  DeployConfig   the workflow's `deploy` section: + where and how the deploy step serves (mm1.config)
  ServeSettings  what the replica reads: + the checkpoint and serve-only tuning (services.settings); it comes
                 from the deploy section, from `build_app`'s arguments (a RayService's serveConfigV2), or
                 from `mm1 serve`
Both are frozen: a replica's settings do not change while it serves. This module needs no torch and no Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from mm1.config_validate import choice


@dataclass(frozen=True)
class AutoscalingConfig:
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8


@dataclass(frozen=True)
class ServingOptions:
    # Name the model is served under (GET /v1/models, the `model` field of requests); in the deploy section
    # empty = the workflow's name.
    model_name: str = ""
    num_replicas: int = 1
    # Replicas scale between min and max with the load; overrides num_replicas when set.
    autoscaling: AutoscalingConfig | None = None
    gpus_per_replica: float = 0
    # Dynamic batching: concurrent requests are decoded together, up to this many (1 = no batching) ...
    max_batch_size: int = 16
    # ... after waiting at most this long for others to share its prefill. Decoding batches continuously:
    # requests that arrive while it decodes join at the next step without any wait, so 0 only spares a lone
    # request the wait.
    batch_wait_timeout_s: float = 0.0
    # Streaming pace: a streamed answer sends a chunk at most every this many seconds (the first token and
    # the end at once), carrying every token decoded meanwhile. Each chunk crosses replica -> ingress -> client,
    # which costs more than a small model's decode step; 0 = a chunk per decode step with visible text.
    stream_interval_s: float = 0.02
    # Decode in a process of its own beside each replica (services.engine_process), so request handling and
    # the model do not take turns on one Python interpreter lock; false = a thread in the replica.
    engine_process: bool = True
    # Environment variable holding the API key; unset or empty variable = no key required.
    api_key_env: str = ""
    max_images: int = 4
    max_image_bytes: int = 10_000_000
    max_image_pixels: int = 16_000_000
    # Local image paths are read only under this folder (empty = no local paths).
    image_dir: str = ""
    # http(s) image URLs only from these hosts (empty = none), fetched with this timeout.
    allowed_image_hosts: list[str] = field(default_factory=list)
    image_fetch_timeout_s: float = 5

    @property
    def autoscaling_config(self) -> dict[str, Any] | None:
        """Ray Serve's `autoscaling_config` (None: a fixed num_replicas)."""
        return None if self.autoscaling is None else asdict(self.autoscaling)


def serving_problems(options: ServingOptions) -> Iterator[tuple[str, str]]:
    """(key, what is wrong) for each setting out of range; the deploy section and ServeSettings both use it."""
    if options.num_replicas < 1 and options.autoscaling is None:
        yield "num_replicas", f"must be at least 1 (or set autoscaling), got {options.num_replicas}"
    if options.max_batch_size < 1:
        yield "max_batch_size", f"must be at least 1, got {options.max_batch_size}"
    for key in ("batch_wait_timeout_s", "stream_interval_s"):
        if getattr(options, key) < 0:
            yield key, f"must be >= 0 seconds, got {getattr(options, key)}"
    if options.max_images < 0:
        yield "max_images", f"must be >= 0, got {options.max_images}"
    for key in ("max_image_bytes", "max_image_pixels"):
        if getattr(options, key) < 1:
            yield key, f"must be at least 1, got {getattr(options, key)}"


@dataclass(frozen=True)
class DeployConfig(ServingOptions):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    # The HTTP ingress in front of the replicas: haproxy (replicas serve HTTP, HAProxy forwards to them), proxy
    # (Serve's Python proxy actor), or auto (haproxy where its binary is, as ray[serve] brings it on Linux).
    # Set when Ray starts (services.ingress): a local Ray takes it from here, clusters from their pods' env.
    ingress: str = choice("auto", "auto", "haproxy", "proxy")
    # On Kubernetes: the Secret (key `api-key`) the serving pods read the API key from (empty = no key).
    api_key_secret: str = ""
    # Keep serving after the workflow ends until Ctrl-C (tests and CI set false).
    keep_serving: bool = True
    # Before the endpoint is reported healthy, fixed image prompts answered by it must equal the training-side
    # forward of the same checkpoint (greedy tokens, logprobs within a dtype's tolerance): services.parity.
    parity_check: bool = True
