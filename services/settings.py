"""What one served application needs to know: the checkpoint, its public name, limits and scaling.

The same settings come from three places: a workflow's `deploy` section (local deploy step, RayService), the
arguments of `build_app` (a RayService's serveConfigV2, where every value arrives as YAML), and `mm1 serve`.
They all end in `ServeSettings`, so the replica sees one typed object whatever started it. Its serving options
(scaling, batching, streaming, API key, image limits) and their rules are the deploy section's own:
mm1.config_serving.ServingOptions, declared once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mm1.config_serving import AutoscalingConfig, DeployConfig, ServingOptions, serving_problems


@dataclass(frozen=True)
class ServeSettings(ServingOptions):
    # A local folder holding save_pretrained model + processor (mm1.model.loading.load_for_inference).
    checkpoint: str = field(kw_only=True)
    # ServingOptions.model_name; "mm1" when `build_app` args or `mm1 serve` give none.
    model_name: str = "mm1"
    # Requests a replica accepts at once (0 = 2 x max_batch_size: one batch decoding, the next one filling).
    max_ongoing_requests: int = 0
    # max_tokens when a request gives none (capped by what is left of the context).
    default_max_tokens: int = 256
    # torch intra-op threads per replica (0 = torch's default, which Ray sets from the replica's CPUs).
    torch_threads: int = 0
    # "cpu", "cuda", "cuda:1", ...; empty = cuda when the replica has GPUs, else cpu.
    device: str = ""

    def __post_init__(self) -> None:
        # Settings may come from YAML (serveConfigV2 args): coerce lists and mappings, and fail here, naming
        # the value. The hosts become a tuple: nothing changes a replica's settings while it serves.
        object.__setattr__(self, "allowed_image_hosts", tuple(self.allowed_image_hosts or ()))
        if isinstance(self.autoscaling, dict):
            object.__setattr__(
                self, "autoscaling", _strictly(AutoscalingConfig, self.autoscaling, "autoscaling key(s)")
            )
        if not self.checkpoint:
            raise ValueError("serve settings need `checkpoint`: a folder with the model and its processor")
        for key, message in serving_problems(self):
            raise ValueError(f"{key} {message}")

    @property
    def torch_device(self) -> str:
        return self.device or ("cuda" if self.gpus_per_replica > 0 else "cpu")

    @property
    def replica_ongoing_requests(self) -> int:
        return self.max_ongoing_requests or max(2 * self.max_batch_size, 8)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeSettings:
        """From `build_app` arguments; unknown keys are an error (a typo must not silently fall back)."""
        return _strictly(cls, args, "serve argument(s)")

    @classmethod
    def from_deploy(cls, deploy: DeployConfig, checkpoint: str, model_name: str) -> ServeSettings:
        """The deploy section's serving options, serving `checkpoint` as `model_name`."""
        options = {f.name: getattr(deploy, f.name) for f in fields(ServingOptions)}
        return cls(**(options | {"model_name": model_name}), checkpoint=checkpoint)

    def to_args(self) -> dict[str, Any]:
        """The `build_app` arguments that recreate these settings (plain data, for YAML)."""
        args = asdict(self)
        args["allowed_image_hosts"] = list(self.allowed_image_hosts)
        return args


def _strictly(cls: type, args: dict[str, Any], what: str) -> Any:
    """cls(**args), naming any key `cls` does not have."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}")
    return cls(**args)
