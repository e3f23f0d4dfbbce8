"""The one training loop, for pre-training and SFT alike, run by every Ray Train worker.

The stages differ only by what the driver passes in: the data (packed pre-training documents or SFT
conversations, with their label masks already set by mm1.data.chat), the frozen parts, the schedule, and the
starting weights. Resuming is uniform: `ray.train.get_checkpoint()` gives the last checkpoint of this run
(after a worker failure or a restarted workflow); step, optimizer, scheduler, data position and metric history
continue from it, so the last step is always the configured one. The first metric row after a resume says so
(`resumed_from`: the step of the checkpoint it continued from; `skipped_microbatches`: what each worker
skipped of the data stream to get back to the saved position).

A metric row (one per step, global over all workers):
    step, loss (per label token), lr (the LR this step used), grad_norm, tokens (real positions),
    sub_images (images and crops encoded), tokens_per_s, images_per_s, mfu, data_wait_fraction and
    compute_fraction (of the step time: waiting for batches, in train_step; the rest is reporting),
    step_time_s (since the previous step ended, so reporting and checkpointing count against throughput),
    time (unix), workers, peak_memory_mb (rank 0); the first row of each start (fresh or resumed) also has
    trainable_params: trainable parameters per part, {vision, connector, llm, lora, all} (mm1.model.lora).
At every logged step each worker also exports its row's figures as Prometheus gauges (mm1_train_*, tagged
with the workflow run, stage, candidate and worker rank; mm1/metrics.py).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from mm1 import metrics, storage
from mm1.config import ModelConfig
from mm1.console import step_line
from mm1.data.loader import PackedCollate
from mm1.model.lora import lora_enabled, trainable_by_part
from mm1.train.checkpoint import (
    MODEL_DIR,
    STATE_FILE,
    load_history,
    load_optimizer,
    load_train_state,
    load_trainable,
    save_checkpoint,
)
from mm1.train.data_position import DataPosition, micro_batches
from mm1.train.job import TrainJob
from mm1.train.mfu import device_peak_flops, flops_model, mfu
from mm1.train.parallel import all_reduce_sum, wrap_model
from mm1.train.schedule import build_optimizer, build_scheduler, choose_lr, sync_lr
from mm1.train.step import train_step


def _build_model(job: TrainJob, checkpoint_dir: Path | None, rank: int = 0):
    """Weights come from (in order): this run's checkpoint, the stage's init checkpoint, or random init. A
    LoRA stage always starts from the stage's starting weights: its checkpoints' trainable tensors are loaded
    onto them after the adapters are added (`model/` of its checkpoints is merged, not a base to adapt).
    The model then runs at the stage's image settings (a no-op when the weights already do)."""
    from mm1.model import MM1ForConditionalGeneration, MM1Processor

    if checkpoint_dir is not None and not lora_enabled(job.stage.lora):
        source = checkpoint_dir / MODEL_DIR
    elif job.init_checkpoint:  # the previous stage's checkpoint, wherever storage keeps it
        source = Path(storage.local_copy(job.init_checkpoint))
    else:
        source = None
    if source is None:
        model, processor = random_init_model(job.model, job.tokenizer_dir)
    else:
        model, processor = (
            MM1ForConditionalGeneration.from_pretrained(source),
            MM1Processor.from_pretrained(source),
        )
    return _at_stage_images(model, processor, job, announce=rank == 0)


def _at_stage_images(model, processor, job: TrainJob, announce: bool = False):
    """The model and processor switched to the stage's resolution and splitting (e.g. SFT at a higher
    resolution than its pre-trained checkpoint): the tower interpolates its position embeddings."""
    from mm1.model import MM1Processor

    if job.images is None:
        return model, processor
    settings = job.images.model_settings()
    config = model.config
    current = {
        "image_size": config.image_size,
        "image_grid": config.image_grid,
        "image_layouts": config.image_layouts,
    }
    if current == settings:
        return model, processor
    if announce:
        say(
            f"[{job.label}] images: {config.image_size} px, grid {config.image_grid} -> "
            f"{settings['image_size']} px, grid {settings['image_grid']}"
        )
    model.set_image_settings(**settings)
    return model, MM1Processor.from_config(model.config, processor.tokenizer)


def random_init_model(model_cfg: ModelConfig, tokenizer_dir: str):
    """A randomly initialized MM1 as the workflow's model section declares it, and its processor."""
    from transformers import AutoTokenizer

    from mm1.model import MM1Processor, build_mm1

    tokenizer = AutoTokenizer.from_pretrained(storage.local_copy(tokenizer_dir))
    model = build_mm1(
        model_cfg.preset,
        tokenizer,
        image_size=model_cfg.image_size,
        connector_type=model_cfg.connector.type,
        num_image_tokens=model_cfg.connector.num_tokens,
        image_grid=model_cfg.image_grid,
        vision=model_cfg.vision or None,
        llm=model_cfg.llm or None,
        overrides=model_cfg.overrides or None,
    )
    return model, MM1Processor.from_config(model.config, tokenizer)


def non_embedding_params(model: torch.nn.Module) -> int:
    """N of MM1's LR law: every parameter but the LLM's token embeddings and (untied) output projection."""
    text = model.config.text_config
    embeddings = text.vocab_size * text.hidden_size * (1 if text.tie_word_embeddings else 2)
    return sum(p.numel() for p in model.parameters()) - embeddings


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point on every worker; `config` carries the stage's TrainJob (mm1.train.job)."""
    from mm1.model import apply_freeze, train_mode

    job = TrainJob.of(config)
    stage = job.stage
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if not stage.use_gpu:
        torch.set_num_threads(max(1, int(stage.cpus_per_worker)))
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and FSDP use the current device
    torch.manual_seed(stage.seed)  # the same initial weights on every worker (FSDP does not broadcast)

    checkpoint = ray.train.get_checkpoint()
    state: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        checkpoint_dir = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
        model, processor = _build_model(job, checkpoint_dir, rank)
        apply_freeze(model, stage.freeze)
        n_params = non_embedding_params(model)  # of the model itself: the LR law knows no adapters
        base_digest = _add_lora(job, model, checkpoint_dir)
        trainable = trainable_by_part(model)
        unwrapped = model  # DDP wraps it; FSDP2 shards it in place: its parts stay reachable here
        lr, weight_decay, lr_why = choose_lr(stage.lr, stage.weight_decay, n_params)
        flops = flops_model(model.config, job.seq_len)
        crops = model.config.sub_images_per_image
        model = wrap_model(
            model,
            stage.strategy,
            stage.precision,
            device,
            activation_checkpointing=stage.activation_checkpointing,
            compile=stage.compile,
            cpu_offload=stage.cpu_offload,
        )
        optimizer = build_optimizer(model, lr, weight_decay)  # after wrapping: FSDP2 swaps the parameters
        scheduler = build_scheduler(optimizer, stage.warmup_steps, stage.steps, stage.min_lr_ratio)
        if checkpoint_dir is not None:
            state = load_train_state(checkpoint_dir, restore_rng=rank == 0)
            load_optimizer(checkpoint_dir, model, optimizer, rank)
            scheduler.load_state_dict(state["scheduler"])
            sync_lr(optimizer, scheduler)
            history = load_history(checkpoint_dir)
    step = int(state["step"]) if state else 0
    position = DataPosition.from_state(state["data_position"]) if state else DataPosition()
    if rank:  # per-worker randomness from here on, reproducible across resumes
        torch.manual_seed(stage.seed + 1000 * rank + step)
    if rank == 0:
        if step:
            resumed = f"resumed at step {step}"
        elif job.init_checkpoint:  # step 0 of a stage that continues another one (SFT after pre-training)
            resumed = f"starting from {job.init_checkpoint}"
        else:
            resumed = "from scratch (random init)"
        say(f"[{job.label}] {resumed}; {lr_why}; trainable parameters {_trainable_line(trainable)}")

    peak = device_peak_flops(device, stage.precision)
    peak_sum, unknown = all_reduce_sum([peak or 0.0, 0.0 if peak else 1.0])
    total_peak = None if unknown else peak_sum
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if stage.precision == "bf16" and device.type == "cuda" and stage.strategy != "fsdp"
        else None  # FSDP's mixed-precision policy casts instead
    )
    micro_batch = stage.batch_size // (world * stage.grad_accum)
    metrics_path = Path(job.metrics_path) if job.metrics_path and rank == 0 else None
    if metrics_path is not None:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))

    skip = position.skip_microbatches(world, micro_batch)
    stream = micro_batches(
        ray.train.get_dataset_shard("train"),
        micro_batch,
        world,
        skip,
        position,
        shuffle_buffer=stage.shuffle_buffer,
        seed=stage.seed,
        collate=PackedCollate.for_processor(processor),  # the tower's pixel statistics, as eval and serving
    )
    resumed_from = step or None
    first_row = True
    model.train()
    train_mode(unwrapped, stage.freeze)
    t_prev = time.perf_counter()
    while step < stage.steps:
        t_wait = time.perf_counter()
        batches = [next(stream) for _ in range(stage.grad_accum)]
        t_compute = time.perf_counter()
        wait = t_compute - t_wait
        stats = train_step(
            model,
            optimizer,
            scheduler,
            batches,
            device=device,
            grad_clip=stage.grad_clip,
            autocast=autocast,
        )
        step += 1
        position.consumed += stage.batch_size
        now = time.perf_counter()
        compute = now - t_compute
        elapsed, t_prev = now - t_prev, now
        row = {
            "stage": job.stage_name,
            "step": step,
            "loss": stats.loss,
            "lr": stats.lr,
            "grad_norm": stats.grad_norm,
            "tokens": stats.tokens,
            "sub_images": stats.sub_images,
            "label_tokens": stats.label_tokens,
            "tokens_per_s": stats.tokens / elapsed,
            "images_per_s": stats.sub_images / crops / elapsed,
            "mfu": mfu(
                flops.step_flops(stats.tokens, stats.sub_images, stats.label_tokens), elapsed, total_peak
            ),
            "data_wait_fraction": wait / elapsed,
            "compute_fraction": compute / elapsed,
            "step_time_s": elapsed,
            "time": time.time(),
            "workers": world,
            "peak_memory_mb": _peak_memory_mb(device),
        }
        if resumed_from is not None:  # the first row after a resume says where it came from
            row.update(resumed_from=resumed_from, skipped_microbatches=skip)
            resumed_from = None
        if first_row:  # and the first row of every start what trained (the run report's table)
            row["trainable_params"] = trainable
            first_row = False
        history.append(row)
        if metrics_path is not None:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        is_checkpoint = step % stage.checkpoint_every == 0 or step == stage.steps
        if not (is_checkpoint or step % stage.log_every == 0):
            continue
        _export(job, rank, row)
        if is_checkpoint:
            train_state = {"step": step, "data_position": position.to_state(), "trainable_params": trainable}
            if base_digest is not None:
                train_state["lora_base_digest"] = base_digest
            _report_checkpoint(
                row, rank, model, processor, optimizer, scheduler, train_state, history, stage.lora
            )
        else:
            ray.train.report(row)
        if rank == 0:
            say(step_line(job.label, step, stage.steps, row))


def say(line: str) -> None:
    """A line for people, written once: Ray Train's patched `print` would also log it (a second copy on the
    driver's console). The driver's console (mm1.console) shows these lines and files Ray's own."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _export(job: TrainJob, rank: int, row: dict[str, Any]) -> None:
    """This worker's figures to Prometheus (mm1_train_*), before the report that may wait on a checkpoint."""
    metrics.train_progress(job.run, job.stage_name, job.candidate, rank, row)


def _add_lora(job: TrainJob, model: torch.nn.Module, checkpoint_dir: Path | None) -> dict | None:
    """With the stage's `lora` on: adapters in, and on resume this run's trainable tensors loaded onto the
    rebuilt starting weights (which must be the ones the run started from). Returns the frozen weights'
    digest, saved with every checkpoint; None without LoRA."""
    from mm1.model.lora import add_lora, check_frozen_digest, frozen_digest

    stage = job.stage
    if not lora_enabled(stage.lora):
        return None
    key = f"{job.stage_name}.lora"
    add_lora(model, stage.lora, stage.freeze, key=key)
    digest = frozen_digest(model)
    if checkpoint_dir is not None:
        saved = torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=False)
        check_frozen_digest(model, saved["lora_base_digest"], key=key)
        load_trainable(checkpoint_dir, model)
    return digest


def _trainable_line(counts: dict[str, int]) -> str:
    parts = ", ".join(f"{name} {n:,}" for name, n in counts.items() if name != "all")
    share = sum(n for name, n in counts.items() if name != "all") / max(1, counts["all"])
    return f"{parts} ({share:.2%} of {counts['all']:,})"


def _report_checkpoint(row, rank, model, processor, optimizer, scheduler, train_state, history, lora) -> None:
    """Every worker saves (a collective under FSDP) and reports; only rank 0 hands Ray a checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), model, processor, optimizer, scheduler, train_state, history, rank, lora)
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
        ray.train.report(row, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{row['step']:06d}")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
