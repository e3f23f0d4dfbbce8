"""Model FLOPs utilisation: model FLOPs per step x steps/s over the device's peak.

Per step, training FLOPs = 6 x (LLM non-embedding params x tokens + (vision + connector params) x image
patches) + the attention term 12 x layers x width x seq_len per token (the PaLM appendix convention).
The CPU peak is measured by a matmul probe; a GPU's peak is declared (bf16 dense, from the data sheet).
"""

from __future__ import annotations

import time

import torch

GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12}


def measure_cpu_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """fp32 matmul throughput of this process's threads (the CPU's MFU denominator)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def device_peak_flops(device: torch.device) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak
        return 989e12
    return measure_cpu_peak_flops()


def _count(module: torch.nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def step_flops(model: torch.nn.Module, tokens: int, image_patches: int, seq_len: int) -> float:
    """Training FLOPs of one optimizer step over `tokens` LLM tokens and `image_patches` encoder patches."""
    llm = getattr(model, "language_model", None)
    text_cfg = model.config.text_config
    embeddings = text_cfg.vocab_size * text_cfg.hidden_size * (1 if text_cfg.tie_word_embeddings else 2)
    llm_params = _count(llm) - embeddings if llm is not None else 0
    encoder_params = _count(getattr(model, "vision_tower", None)) + _count(getattr(model, "connector", None))
    attention = 12 * text_cfg.num_hidden_layers * text_cfg.hidden_size * seq_len
    return 6 * (llm_params * tokens + encoder_params * image_patches) + attention * tokens
