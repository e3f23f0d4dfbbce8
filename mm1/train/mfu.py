"""Model FLOPs utilisation: useful model FLOPs per second over the hardware's peak.

FLOPs follow mm1.model.info (one definition for the whole platform): training FLOPs per LLM position
(6 x active non-embedding LLM params + the output projection + PaLM's attention term at `seq_len`) and per
encoded (sub-)image (6 x encoder + connector params per patch + the encoder's attention; a CNN encoder is
counted layer by layer). Only real tokens count: padding is work the hardware does but the model does not
need, so it lowers MFU, as it should.
The peak of a CPU is measured by a matmul probe in the worker's own threads, and the best probe so far on the
machine is kept (`cpu_peak_flops`); a GPU's is declared from its data sheet (dense, no sparsity) for the
precision the stage trains in; an unknown GPU has no peak (MFU None).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Dense tensor-core peaks, FLOP/s: bf16, and tf32 (what fp32 matmuls run as on these cards).
GPU_PEAK_FLOPS = {
    "bf16": {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12},
    "fp32": {"H200": 495e12, "H100": 495e12, "A100": 156e12, "L40S": 183e12, "L4": 60e12, "A10G": 35e12},
}


@dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs of one step as a function of what it processed."""

    per_token: float  # per real LLM position (text and image tokens alike)
    per_sub_image: float  # per encoded image or crop
    # The LM head's share of per_token. Training's step runs the head only at positions with a label
    # (MM1ForConditionalGeneration's loss_only), so given `label_tokens` it is counted there alone.
    head_per_token: float = 0.0

    def step_flops(self, tokens: int, sub_images: int, label_tokens: int | None = None) -> float:
        """Training FLOPs of a step; with `label_tokens`, the LM head's only at those positions."""
        head = 0.0 if label_tokens is None else self.head_per_token * (label_tokens - tokens)
        return self.per_token * tokens + head + self.per_sub_image * sub_images


def flops_model(config, seq_len: int) -> FlopsModel:
    """From an MM1Config (e.g. `model.config`), via mm1.model.info on the meta device (no memory)."""
    from mm1.model.info import model_info

    info = model_info(config, seq_len=seq_len)
    text = config.text_config
    return FlopsModel(
        per_token=float(info["flops_per_token"]),
        per_sub_image=float(info["flops_per_image"]) / config.sub_images_per_image,
        head_per_token=6.0 * text.hidden_size * text.vocab_size,
    )


def measure_cpu_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 matmul throughput of this process's torch threads (the CPU's MFU denominator)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool start and first-touch of the output
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_cache_path() -> Path:
    """Where the best CPU probes are kept: $MM1_CACHE_DIR, else ~/.cache/mm1."""
    root = os.environ.get("MM1_CACHE_DIR") or Path.home() / ".cache" / "mm1"
    return Path(root) / "cpu_peak_flops.json"


def cpu_peak_key() -> str:
    """What a kept probe is valid for: the CPU model, the machine's CPUs, the threads, torch's version."""
    return f"{_cpu_name()} | {os.cpu_count()} cpus | {torch.get_num_threads()} threads | torch {torch.__version__}"


def cpu_peak_flops() -> float:
    """The CPU's fp32 matmul peak for this process's torch threads: the best of a probe now and every earlier
    probe on this machine. A probe that meets a busy machine (a worker starting while Ray Data still reads)
    measures less than the hardware can do, and a low denominator would inflate every MFU of that run."""
    measured = measure_cpu_peak_flops(repeats=10)
    key = cpu_peak_key()
    path = peak_cache_path()
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    best = max(measured, float(known.get(key, 0.0)))
    if best > float(known.get(key, 0.0)):
        try:  # best effort: a read-only home only loses the memory of earlier probes
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps({**known, key: best}, indent=1) + "\n")
            os.replace(partial, path)
        except OSError:
            pass
    return best


def gpu_peak_flops(name: str, precision: str) -> float | None:
    table = GPU_PEAK_FLOPS["bf16" if precision == "bf16" else "fp32"]
    return next((peak for key, peak in table.items() if key in name), None)


def device_peak_flops(device: torch.device, precision: str = "fp32") -> float | None:
    """Peak FLOP/s of one worker's device; None where unknown (an unlisted GPU), rather than a guess."""
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), precision)
    return cpu_peak_flops()


def mfu(flops: float, seconds: float, peak_flops: float | None) -> float | None:
    """`flops` done in `seconds` over `peak_flops` (the summed peak of every device that did them)."""
    if not peak_flops or seconds <= 0:
        return None
    return flops / seconds / peak_flops
