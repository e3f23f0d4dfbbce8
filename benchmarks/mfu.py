"""Training throughput and MFU of a preset at the paper's shapes, on whatever devices exist.

Steps the training loop's own arithmetic (mm1.train.step.train_step, wrapped by mm1.train.parallel.wrap_model,
AdamW from mm1.train.schedule) over synthetic packed rows shaped like MM1 pre-training: `--seq-len` positions
(4096) per row, `--images-per-row` images (16, the paper's cap) at the preset's resolution (378 px for the
paper presets, 144 image tokens each), each image a document of its own (image tokens, then text) with
position ids restarting per document, as sequence packing leaves them. No data pipeline, no Ray: the figure
is the model's, and `benchmarks/train.py` measures what the loop around it costs.

Printed (rank 0): step time (median of the measured steps), tokens/s (real positions; padding excluded,
though these rows have none), images/s, peak memory (CUDA: max allocated; CPU: the process's max RSS), the
step's training FLOPs split into vision tower + connector and LLM (mm1.model.info's definitions via
mm1.train.mfu.flops_model; the LM head counted at the label positions only, where the step runs it), the
device peak and MFU. The peak is the dense data-sheet figure for the
precision (mm1.train.mfu.GPU_PEAK_FLOPS: H100/H200 989 TFLOP/s bf16, A100 312), summed over the devices;
on a CPU it is a measured fp32 matmul probe and the figure is not a GPU one (the output says so).

    .venv/bin/python benchmarks/mfu.py                      # mm1-3b on a GPU; the tiny preset on a CPU
    .venv/bin/python benchmarks/mfu.py --preset mm1-3b --compile --ac selective
    torchrun --nproc-per-node 8 benchmarks/mfu.py --preset mm1-7b --strategy fsdp

`--compile`, `--ac` and `--cpu-offload` are passed to wrap_model only when its signature has them (an error
otherwise, so a figure is never labelled with an option that did not run).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mm1.data.chat import IGNORE_INDEX  # noqa: E402
from mm1.model import build_mm1  # noqa: E402
from mm1.train.mfu import device_peak_flops, flops_model, mfu  # noqa: E402
from mm1.train.parallel import all_reduce_sum, wrap_model  # noqa: E402
from mm1.train.schedule import build_optimizer, build_scheduler  # noqa: E402
from mm1.train.step import train_step  # noqa: E402

PAPER_SEQ_LEN = 4096
PAPER_IMAGES_PER_ROW = 16  # MM1 pre-training packs up to 16 images into a 4096-token row
# The tiny presets (2k positions, 16 image tokens at 64 px): a size that runs a CPU step in well under a second.
TINY_SHAPE = {"seq_len": 256, "images_per_row": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", help="mm1.registry preset (default: mm1-3b on a GPU, tiny on a CPU)")
    p.add_argument(
        "--seq-len", type=int, help=f"positions per packed row (default {PAPER_SEQ_LEN}; tiny 256)"
    )
    p.add_argument("--images-per-row", type=int, help="images per packed row (default 16; tiny 4)")
    p.add_argument("--batch-size", type=int, default=1, help="rows per micro-batch per device")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, help="measured steps (default 10; CPU 4)")
    p.add_argument("--warmup", type=int, help="steps run before measuring (default 3; CPU 1)")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], help="default fsdp on several devices, else ddp")
    p.add_argument("--compile", action="store_true", help="torch.compile per block (if wrap_model has it)")
    p.add_argument(
        "--ac", choices=["none", "selective", "full"], default="none", help="activation checkpointing"
    )
    p.add_argument("--cpu-offload", action="store_true", help="FSDP2 CPU offload (if wrap_model has it)")
    p.add_argument("--threads", type=int, help="torch threads on a CPU (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the figures to this file (rank 0)")
    return p.parse_args(argv)


def setup_devices() -> tuple[torch.device, int, int]:
    """One process per device (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def wrap_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of this wrap_model that the flags ask for; an error for one it does not have."""
    params = inspect.signature(wrap_model).parameters
    wanted = {"compile": args.compile, "activation_checkpointing": args.ac, "cpu_offload": args.cpu_offload}
    defaults = {"compile": False, "activation_checkpointing": "none", "cpu_offload": False}
    options = {}
    for name, value in wanted.items():
        if name in params:
            options[name] = value
        elif value != defaults[name]:
            raise SystemExit(
                f"mm1.train.parallel.wrap_model has no `{name}` option here: cannot run {name}={value}"
            )
    return options


def packed_rows(
    config, rows: int, seq_len: int, images: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """`rows` packed rows of `seq_len` positions: `images` documents of (image tokens, then text), or one
    text document; labels on the text only; position ids restarting per document; no padding."""
    image_tokens = config.image_tokens_per_image
    if images * image_tokens >= seq_len:
        raise SystemExit(
            f"{images} images x {image_tokens} tokens do not fit in a row of {seq_len} positions"
        )
    vocab = config.text_config.vocab_size
    ids = torch.randint(config.image_token_id + 1, vocab, (rows, seq_len), generator=generator)
    labels = ids.clone()
    positions = torch.empty(rows, seq_len, dtype=torch.long)
    docs = max(images, 1)
    text = (seq_len - images * image_tokens) // docs
    start = 0
    for d in range(docs):
        length = (
            (image_tokens if images else 0)
            + text
            + (seq_len - images * image_tokens - docs * text) * (d == docs - 1)
        )
        positions[:, start : start + length] = torch.arange(length)
        if images:
            ids[:, start : start + image_tokens] = config.image_token_id
            labels[:, start : start + image_tokens] = IGNORE_INDEX
        start += length
    size = config.image_size
    pixels = torch.randn(rows * images * config.sub_images_per_image, 3, size, size, generator=generator)
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": torch.ones_like(ids),
        "position_ids": positions,
        "pixel_values": pixels,
    }


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device, rank, world = setup_devices()
    preset = args.preset or ("mm1-3b" if device.type == "cuda" else "tiny")
    tiny = preset.startswith("tiny")
    seq_len = args.seq_len or (TINY_SHAPE["seq_len"] if tiny else PAPER_SEQ_LEN)
    images = args.images_per_row
    if images is None:
        images = TINY_SHAPE["images_per_row"] if tiny else PAPER_IMAGES_PER_ROW
    steps = args.steps or (10 if device.type == "cuda" else 4)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    strategy = args.strategy or ("fsdp" if world > 1 else "ddp")
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    options = wrap_options(args)

    torch.manual_seed(0)
    with torch.device("cpu" if device.type == "cpu" or args.cpu_offload else device):
        model = build_mm1(preset)
    config = model.config
    flops = flops_model(config, seq_len)
    model = wrap_model(model, strategy, precision, device, **options)
    optimizer = build_optimizer(model, 1e-5, 1e-6)
    scheduler = build_scheduler(optimizer, 0, warmup + steps, 1.0)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if precision == "bf16" and device.type == "cuda" and strategy != "fsdp"
        else None  # FSDP's mixed-precision policy casts instead (as mm1.train.loop)
    )
    generator = torch.Generator().manual_seed(rank)
    batches = [
        packed_rows(config, args.batch_size, seq_len, images, generator) for _ in range(args.grad_accum)
    ]
    peak = device_peak_flops(device, precision)
    peak_sum, unknown = all_reduce_sum([peak or 0.0, 0.0 if peak else 1.0])
    total_peak = None if unknown else peak_sum

    model.train()
    times, tokens, sub_images, labels = [], [], [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        stats = train_step(
            model, optimizer, scheduler, batches, device=device, grad_clip=1.0, autocast=autocast
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            tokens.append(stats.tokens)
            sub_images.append(stats.sub_images)
            labels.append(stats.label_tokens)
    seconds = sum(times)
    step_tokens, step_images = statistics.mean(tokens), statistics.mean(sub_images)
    step_labels = statistics.mean(labels)
    step_flops = flops.step_flops(step_tokens, step_images, step_labels)
    vision_flops = flops.per_sub_image * step_images
    llm_flops = step_flops - vision_flops  # the LM head counted at label positions only, where it ran
    result = {
        "preset": preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "devices": world,
        "precision": precision,
        "strategy": strategy if world > 1 else "single",
        **options,
        "seq_len": seq_len,
        "images_per_row": images,
        "image_size": config.image_size,
        "image_tokens_per_image": config.image_tokens_per_image,
        "rows_per_step": args.batch_size * args.grad_accum * world,
        "steps": steps,
        "step_time_s": statistics.median(times),
        "tokens_per_s": sum(tokens) / seconds,
        "images_per_s": sum(sub_images) / config.sub_images_per_image / seconds,
        "peak_memory_gib": peak_memory_gib(device),  # rank 0's
        "flops_per_step": step_flops,
        "vision_connector_flops_per_step": vision_flops,
        "llm_flops_per_step": llm_flops,
        "device_peak_flops": peak,
        "mfu": mfu(step_flops * len(times), seconds, total_peak),
        "gpu_figure": device.type == "cuda",
    }
    if rank == 0:
        print(format_result(result, total_peak), flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    if world > 1:
        dist.destroy_process_group()
    return result


def format_result(r: dict[str, Any], total_peak: float | None) -> str:
    options = ", ".join(
        f"{k}={r[k]}" for k in ("compile", "activation_checkpointing", "cpu_offload") if k in r
    )
    where = f"{r['devices']} x {r['device']}"
    peak = r["device_peak_flops"]
    if r["gpu_figure"]:
        peak_line = (
            f"{peak / 1e12:.0f} TFLOP/s per device (dense {r['precision']}, data sheet)"
            if peak
            else ("unknown (this GPU is not in mm1.train.mfu.GPU_PEAK_FLOPS): no MFU")
        )
    else:
        peak_line = (
            f"{peak / 1e9:.1f} GFLOP/s (measured fp32 matmul probe, {torch.get_num_threads()} threads)"
        )
    lines = [
        f"preset           {r['preset']} on {where}, {r['precision']}, {r['strategy']}"
        + (f", {options}" if options else ""),
        f"shape            {r['rows_per_step']} rows/step x {r['seq_len']} positions, {r['images_per_row']} images/row "
        f"at {r['image_size']} px ({r['image_tokens_per_image']} tokens each)",
        f"step time        {r['step_time_s']:.3f} s (median of {r['steps']} steps)",
        f"tokens/s         {r['tokens_per_s']:,.0f}",
        f"images/s         {r['images_per_s']:,.1f}",
        f"peak memory      {r['peak_memory_gib']:.2f} GiB per device"
        + (" (max allocated)" if r["gpu_figure"] else " (process max RSS)"),
        f"FLOPs/step       {r['flops_per_step']:.3e} (vision+connector {r['vision_connector_flops_per_step']:.3e}, "
        f"LLM {r['llm_flops_per_step']:.3e})",
        f"device peak      {peak_line}",
        f"MFU              {r['mfu']:.1%}" if r["mfu"] is not None else "MFU              n/a",
    ]
    if not r["gpu_figure"]:
        lines.append("NOTE             CPU run: not a GPU figure (MFU against this CPU's fp32 matmul probe)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
