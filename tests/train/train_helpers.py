"""A tiny Shapes workflow and model for the training tests and benchmark (seconds per step on a CPU)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mm1.config import ModelConfig

SEQ_LEN = 128
IMAGE_SIZE = 32
IMAGE_TOKENS = 4  # avgpool to 2x2 tokens per image

WORKFLOW = f"""
name: train-tests
data:
  shapes: {{caption_samples: 120, interleaved_docs: 30, text_samples: 40, sft_samples: 40}}
  vocab_size: 320
packing:
  seq_len: {SEQ_LEN}
  max_images: 4
model:
  preset: tiny
  image_size: {IMAGE_SIZE}
  connector: {{type: avgpool, num_tokens: {IMAGE_TOKENS}}}
"""


@dataclasses.dataclass
class Ingested:
    shard_dir: str
    tokenizer_dir: str
    model_cfg: ModelConfig

    def dataset(self):
        from mm1.data.loader import build_train_dataset

        return build_train_dataset(
            self.shard_dir,
            image_size=IMAGE_SIZE,
            image_grid=1,
            image_tokens_per_image=IMAGE_TOKENS,
            seq_len=SEQ_LEN,
            max_images=4,
            seed=0,
        )


# ------------------------------------------------------------------ tiny models and batches without Ray

TEXTS = ["a red square above a blue circle", "how many circles? two", "the quick brown fox"] * 20


def make_tokenizer():
    from mm1.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def make_model(tokenizer, seed: int = 0):
    """`tiny` cut to 2 LLM and 2 encoder layers at 32 px: a step takes milliseconds."""
    import torch

    from mm1.model import build_mm1

    torch.manual_seed(seed)
    return build_mm1(
        "tiny",
        tokenizer,
        image_size=IMAGE_SIZE,
        connector_type="avgpool",
        num_image_tokens=IMAGE_TOKENS,
        overrides={"text_config.num_hidden_layers": 2, "vision_config.num_hidden_layers": 2},
    )


def make_batch(seed: int, rows: int, seq_len: int, image_token_id: int, vocab: int, images_per_row: int = 1):
    """A packed-like batch: each row = images (IMAGE_TOKENS placeholders each) + text, then padding of a
    random length; labels -100 on images, a random prompt prefix and padding; so micro-batches differ in
    their label-token counts, which is what token-weighted accumulation must get right."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (rows, seq_len), generator=g)
    labels = ids.clone()
    mask = torch.ones(rows, seq_len, dtype=torch.long)
    for r in range(rows):
        n_img = images_per_row * IMAGE_TOKENS
        ids[r, :n_img] = image_token_id
        prompt = int(torch.randint(n_img, seq_len // 2, (1,), generator=g))
        labels[r, :prompt] = -100
        real = int(torch.randint(seq_len // 2 + 1, seq_len + 1, (1,), generator=g))
        labels[r, real:] = -100
        mask[r, real:] = 0
        ids[r, real:] = 0
    position_ids = torch.arange(seq_len).expand(rows, seq_len).clone()
    pixels = torch.randn(rows * images_per_row, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "position_ids": position_ids,
        "pixel_values": pixels,
    }


def concat(batches: list[dict]) -> dict:
    import torch

    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def sgd(model):
    """Plain SGD (lr 1) and a constant schedule: a parameter's change after a step IS minus its gradient,
    so gradients can be compared exactly (AdamW's first step would hide their scale)."""
    import torch

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def parallel_worker(
    rank: int, world: int, port: int, strategy: str, tokenizer_dir: str, out_dir: str
) -> None:
    """One of `world` gloo processes (torch.multiprocessing.spawn): (1) an SGD step on this rank's two
    micro-batches, full weights saved by rank 0; (2) an AdamW step, a checkpoint, a fresh model and optimizer
    restored from it, and one more step on both, whose results must agree."""
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer

    from mm1.model import MM1ForConditionalGeneration, MM1Processor
    from mm1.train.checkpoint import MODEL_DIR, load_optimizer, save_checkpoint
    from mm1.train.parallel import wrap_model
    from mm1.train.schedule import build_optimizer, build_scheduler
    from mm1.train.step import train_step

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        out, cpu = Path(out_dir), torch.device("cpu")
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = make_model(tokenizer)
        processor = MM1Processor.from_config(model.config, tokenizer)
        vocab, image_id = model.config.text_config.vocab_size, model.config.image_token_id

        def batches(seed: int) -> list[dict]:
            return [make_batch(seed + 2 * rank + i, 2, 24, image_id, vocab) for i in range(2)]

        model = wrap_model(model, strategy, "fp32", cpu)
        optimizer, scheduler = sgd(model)
        stats = train_step(model, optimizer, scheduler, batches(0), device=cpu, grad_clip=1e9)
        weights = get_model_state_dict(model, options=full)
        if rank == 0:
            torch.save({"loss": stats.loss, "tokens": stats.tokens, "weights": weights}, out / "sgd.pt")

        adam = build_optimizer(model, 1e-3, 1e-4)
        schedule = build_scheduler(adam, 1, 4, 0.1)
        train_step(model, adam, schedule, batches(10), device=cpu, grad_clip=1.0)
        save_checkpoint(out / "ckpt", model, processor, adam, schedule, {"step": 1}, [], rank)
        dist.barrier()  # rank 0 has written the checkpoint

        restored = MM1ForConditionalGeneration.from_pretrained(out / "ckpt" / MODEL_DIR)
        restored = wrap_model(restored, strategy, "fp32", cpu)
        adam2 = build_optimizer(restored, 1e-3, 1e-4)
        schedule2 = build_scheduler(adam2, 1, 4, 0.1)
        load_optimizer(out / "ckpt", restored, adam2, rank)
        schedule2.load_state_dict(schedule.state_dict())
        for m, opt, sched in ((model, adam, schedule), (restored, adam2, schedule2)):
            train_step(m, opt, sched, batches(20), device=cpu, grad_clip=1.0)
        after = [get_model_state_dict(m, options=full) for m in (model, restored)]
        if rank == 0:
            torch.save({"original": after[0], "restored": after[1]}, out / "resumed.pt")
    finally:
        dist.destroy_process_group()


def tiny_lora(**kwargs):
    """LoRA on the LLM's attention projections (the tests' usual adapters)."""
    from mm1.config_sections import LoraConfig

    return LoraConfig(**{"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "o_proj"], **kwargs})


def lora_parallel_worker(
    rank: int, world: int, port: int, strategy: str, tokenizer_dir: str, out_dir: str
) -> None:
    """One of `world` gloo processes: LoRA on the LLM, the connector in full, the vision tower frozen; two AdamW
    steps, a checkpoint, then a fresh base with the checkpoint's trainable tensors and optimizer, and one more
    step on both, whose trainable weights must agree (saved by rank 0 with the merged checkpoint)."""
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer

    from mm1.model import MM1Processor
    from mm1.model.lora import add_lora, trainable_names
    from mm1.train.checkpoint import load_optimizer, load_trainable, save_checkpoint
    from mm1.train.parallel import unwrap, wrap_model
    from mm1.train.schedule import build_optimizer, build_scheduler
    from mm1.train.step import train_step

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        out, cpu = Path(out_dir), torch.device("cpu")
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        lora = tiny_lora()

        def adapted(seed: int):
            model = make_model(tokenizer)
            torch.manual_seed(seed)
            add_lora(model, lora, frozen=["vision"])
            return model

        model = adapted(0)
        processor = MM1Processor.from_config(model.config, tokenizer)
        vocab, image_id = model.config.text_config.vocab_size, model.config.image_token_id

        def batches(seed: int) -> list[dict]:
            return [make_batch(seed + 2 * rank + i, 2, 24, image_id, vocab) for i in range(2)]

        model = wrap_model(model, strategy, "fp32", cpu)
        adam = build_optimizer(model, 1e-2, 1e-4)
        schedule = build_scheduler(adam, 1, 4, 0.1)
        for seed in (0, 10):
            train_step(model, adam, schedule, batches(seed), device=cpu, grad_clip=1.0)
        save_checkpoint(out / "ckpt", model, processor, adam, schedule, {"step": 2}, [], rank, lora)
        dist.barrier()  # rank 0 has written the checkpoint

        restored = adapted(seed=123)  # other adapter initial values: the checkpoint must overwrite them
        load_trainable(out / "ckpt", restored)
        restored = wrap_model(restored, strategy, "fp32", cpu)
        adam2 = build_optimizer(restored, 1e-2, 1e-4)
        schedule2 = build_scheduler(adam2, 1, 4, 0.1)
        load_optimizer(out / "ckpt", restored, adam2, rank)
        schedule2.load_state_dict(schedule.state_dict())
        for m, opt, sched in ((model, adam, schedule), (restored, adam2, schedule2)):
            train_step(m, opt, sched, batches(20), device=cpu, grad_clip=1.0)
        names = trainable_names(unwrap(model))
        after = [get_model_state_dict(m, options=full) for m in (model, restored)]
        if rank == 0:
            picked = [{n: s[n] for n in names} for s in after]
            torch.save({"original": picked[0], "restored": picked[1]}, out / "resumed.pt")
    finally:
        dist.destroy_process_group()
