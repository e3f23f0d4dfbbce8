"""The one training loop, for pre-training and SFT alike, run by every Ray Train worker.

The stages differ only by what the driver passes in: the data (packed pre-training documents or SFT
conversations, with their label masks already set by mm1.data.chat), the frozen parts, the schedule, and the
starting weights. Resuming is uniform: `ray.train.get_checkpoint()` gives the last checkpoint of this run
(after a worker failure or a restarted workflow); the step counter, optimizer, scheduler and data position
continue from it, so the last step is always the configured one.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch

from mm1.train.checkpoint import MODEL_DIR, load_history, load_train_state, save_checkpoint
from mm1.train.mfu import device_peak_flops, step_flops
from mm1.train.schedule import build_optimizer, build_scheduler, choose_lr


def _build_model(cfg: dict[str, Any], checkpoint_dir: Path | None):
    """Weights come from (in order): this run's checkpoint, the stage's init checkpoint, or random init."""
    from mm1.model import MM1ForConditionalGeneration, MM1Processor, build_mm1

    if checkpoint_dir is not None:
        source = checkpoint_dir / MODEL_DIR
    elif cfg.get("init_checkpoint"):
        source = Path(cfg["init_checkpoint"])
    else:
        source = None
    if source is not None:
        return MM1ForConditionalGeneration.from_pretrained(source), MM1Processor.from_pretrained(source)
    processor_tokenizer = _tokenizer(cfg["tokenizer_dir"])
    m = cfg["model"]
    model = build_mm1(
        m["preset"],
        processor_tokenizer,
        image_size=m["image_size"],
        connector_type=m["connector"]["type"],
        num_image_tokens=m["connector"]["num_tokens"],
        image_grid=m["image_grid"],
        vision=m["vision"] or None,
        llm=m["llm"] or None,
        overrides=m["overrides"] or None,
    )
    return model, MM1Processor.from_config(model.config, processor_tokenizer)


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _non_embedding_params(model: torch.nn.Module) -> int:
    text = model.config.text_config
    embeddings = text.vocab_size * text.hidden_size * (1 if text.tie_word_embeddings else 2)
    return sum(p.numel() for p in model.parameters()) - embeddings


def _distribute(model: torch.nn.Module, stage: dict[str, Any]) -> torch.nn.Module:
    if stage["activation_checkpointing"] and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    if stage["strategy"] == "fsdp":
        # FSDP2: shard each decoder layer, then the whole model (GPU only; the config rejects it on CPU).
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16) if stage["precision"] == "bf16" else None
        kwargs = {"mp_policy": policy} if policy else {}
        model.to(ray.train.torch.get_device())
        for layer in model.language_model.model.layers:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        return model
    return ray.train.torch.prepare_model(model)


def train_loop_per_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    stage = cfg["stage_cfg"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(stage["seed"] + rank)
    if not stage["use_gpu"]:
        torch.set_num_threads(max(1, int(stage["cpus_per_worker"])))

    checkpoint = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        checkpoint_dir = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
        model, processor = _build_model(cfg, checkpoint_dir)
        from mm1.model import apply_freeze

        apply_freeze(model, stage["freeze"])
        lr, weight_decay, lr_why = choose_lr(stage["lr"], stage["weight_decay"], _non_embedding_params(model))
        optimizer = build_optimizer(model, lr, weight_decay)
        scheduler = build_scheduler(optimizer, stage["warmup_steps"], stage["steps"], stage["min_lr_ratio"])
        step, consumed, history = 0, 0, []
        if checkpoint_dir is not None:
            state = load_train_state(checkpoint_dir)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, consumed = state["step"], state["consumed_microbatches"]
            history = load_history(checkpoint_dir)
    if rank == 0:
        resumed = f"resumed at step {step}" if step else "from scratch"
        print(f"[{cfg['label']}] {resumed}; {lr_why}", flush=True)

    patches_per_image = int(getattr(model.config, "num_patches", 0))  # per encoded (sub-)image, for MFU
    device = ray.train.torch.get_device()
    model = _distribute(model, stage)
    model.train()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if stage["precision"] == "bf16" and device.type == "cuda"
        else contextlib.nullcontext()
    )
    micro_batch = stage["batch_size"] // (world * stage["grad_accum"])
    peak = cfg.get("peak_flops") or device_peak_flops(device)
    seq_len = cfg["seq_len"]
    shard = ray.train.get_dataset_shard("train")
    metrics_path = Path(cfg["metrics_path"]) if cfg.get("metrics_path") and rank == 0 else None
    if metrics_path is not None:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))

    from mm1.data.loader import collate_packed

    def batches():
        """Micro-batches forever (epoch after epoch), skipping those a resumed run already consumed."""
        seen = 0
        while True:
            produced = False
            for batch in shard.iter_torch_batches(
                batch_size=micro_batch, collate_fn=collate_packed, drop_last=True, prefetch_batches=4
            ):
                produced = True
                seen += 1
                if seen <= consumed:
                    continue
                yield batch
            if not produced:
                raise RuntimeError(
                    f"the training data yields no batch of {micro_batch} sequences: "
                    "add data or lower batch_size"
                )

    stream = batches()
    while step < stage["steps"]:
        t_step = time.perf_counter()
        wait = 0.0
        tokens = images = patches = 0
        loss_sum = 0.0
        for _ in range(stage["grad_accum"]):
            t_wait = time.perf_counter()
            batch = next(stream)
            wait += time.perf_counter() - t_wait
            consumed += 1
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                out = model(**batch)
                loss = out.loss / stage["grad_accum"]
            loss.backward()
            loss_sum += loss.item()
            tokens += int(batch["attention_mask"].sum())
            images += int(batch["pixel_values"].shape[0])
            patches += int(batch["pixel_values"].shape[0]) * patches_per_image
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), stage["grad_clip"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - t_step
        row = {
            "stage": cfg["stage"],
            "step": step,
            "loss": loss_sum,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "tokens_per_s": tokens * world / elapsed,
            "images_per_s": images * world / elapsed,
            "data_wait_fraction": wait / elapsed,
            "mfu": step_flops(model.module if hasattr(model, "module") else model, tokens, patches, seq_len)
            / elapsed
            / peak,
            "peak_memory_mb": _peak_memory_mb(device),
            "step_time_s": elapsed,
        }
        history.append(row)
        if metrics_path is not None:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        is_checkpoint = step % stage["checkpoint_every"] == 0 or step == stage["steps"]
        if is_checkpoint or step % stage["log_every"] == 0:
            _report(row, is_checkpoint, rank, model, processor, optimizer, scheduler, step, consumed, history)
            if rank == 0:
                print(
                    f"[{cfg['label']}] step {step}/{stage['steps']} loss {row['loss']:.4f} "
                    f"lr {row['lr']:.2e} tok/s {row['tokens_per_s']:.0f} wait {row['data_wait_fraction']:.1%}",
                    flush=True,
                )
    return {"steps": step, "final_loss": history[-1]["loss"] if history else None}


def _report(
    row, is_checkpoint, rank, model, processor, optimizer, scheduler, step, consumed, history
) -> None:
    if not is_checkpoint:
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_checkpoint(
                Path(tmp),
                model,
                processor,
                optimizer,
                scheduler,
                {"step": step, "consumed_microbatches": consumed},
                history,
            )
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(row, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step:06d}")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
