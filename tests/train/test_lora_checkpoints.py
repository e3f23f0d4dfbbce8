"""LoRA stages (mm1.model.lora) in the training loop's checkpoints: the merged export is a plain model folder
whose greedy answers are the adapter model's; resuming loads the trainable tensors onto the stage's starting
weights and continues exactly (one worker, DDP and FSDP2 on two gloo processes, and a Ray Train fit continued
with more steps, as tests/train/test_failures.py does for full weights)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from train_helpers import SEQ_LEN, lora_parallel_worker, make_batch, make_model, make_tokenizer, tiny_lora

from mm1.config import TrainConfig
from mm1.data.chat import IMAGE
from mm1.model import MM1Processor, generate_answers, load_for_inference
from mm1.model.lora import add_lora, check_frozen_digest, frozen_digest, is_lora_name, trainable_names
from mm1.train.checkpoint import (
    MODEL_DIR,
    OPTIMIZER_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    load_optimizer,
    load_train_state,
    load_trainable,
    save_checkpoint,
)
from mm1.train.schedule import build_optimizer, build_scheduler
from mm1.train.step import train_step

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _adapted(tokenizer, adapter_seed: int = 0, base_seed: int = 0):
    model = make_model(tokenizer, seed=base_seed)
    torch.manual_seed(adapter_seed)
    add_lora(model, tiny_lora(), frozen=["vision"])
    return model


def _batches(model, seed: int) -> list[dict]:
    vocab, image_id = model.config.text_config.vocab_size, model.config.image_token_id
    return [make_batch(seed + i, 2, 24, image_id, vocab) for i in range(2)]


@pytest.fixture(scope="module")
def trained(tokenizer, tmp_path_factory):
    """Three AdamW steps of LoRA on the LLM (connector in full, vision frozen), checkpointed as the loop does."""
    folder = tmp_path_factory.mktemp("lora-ckpt")
    model = _adapted(tokenizer)
    optimizer = build_optimizer(model, 2e-2, 1e-4)
    scheduler = build_scheduler(optimizer, 1, 10, 0.1)
    for seed in (0, 10, 20):
        train_step(model, optimizer, scheduler, _batches(model, seed), device=CPU, grad_clip=1.0)
    processor = MM1Processor.from_config(model.config, tokenizer)
    state = {"step": 3, "lora_base_digest": frozen_digest(model)}
    save_checkpoint(folder, model, processor, optimizer, scheduler, state, [], rank=0, lora=tiny_lora())
    return folder, model, optimizer, scheduler, processor


def test_the_checkpoint_holds_a_plain_merged_model_and_the_trainable_tensors(trained):
    folder, model, *_ = trained
    weights = load_file(str(folder / MODEL_DIR / "model.safetensors"))
    assert not any(is_lora_name(k) or ".base_layer." in k for k in weights)
    trainable = load_file(str(folder / TRAINABLE_FILE))
    assert set(trainable) == set(trainable_names(model))
    assert any(is_lora_name(k) for k in trainable) and any(k.startswith("connector.") for k in trainable)
    optimizer = torch.load(folder / OPTIMIZER_FILE, weights_only=False)["state"]
    assert set(optimizer) == set(trainable), "optimizer state for the trainable parameters only"


def test_the_merged_export_answers_like_the_adapter_model(trained):
    folder, model, _, _, processor = trained
    merged, merged_processor = load_for_inference(folder / MODEL_DIR)
    assert type(merged).__name__ == "MM1ForConditionalGeneration"
    assert not any(is_lora_name(n) for n, _ in merged.named_parameters())
    rng = torch.Generator().manual_seed(0)
    images = [(torch.rand(40, 40, 3, generator=rng) * 255).to(torch.uint8).numpy() for _ in range(3)]
    chats = [([{"role": "user", "content": f"{IMAGE}\nwhat shape is it?"}], [im]) for im in images]
    chats.append(([{"role": "user", "content": "how many circles?"}], []))
    model.eval()
    adapted = generate_answers(model, processor, chats, max_new_tokens=10)
    assert generate_answers(merged, merged_processor, chats, max_new_tokens=10) == adapted


def test_resume_onto_the_starting_weights_continues_exactly(tokenizer, trained):
    folder, model, optimizer, scheduler, _ = trained
    restored = _adapted(tokenizer, adapter_seed=99)  # other adapter values: the checkpoint overwrites them
    state = load_train_state(folder, restore_rng=False)
    check_frozen_digest(restored, state["lora_base_digest"])
    load_trainable(folder, restored)
    optimizer2 = build_optimizer(restored, 2e-2, 1e-4)
    scheduler2 = build_scheduler(optimizer2, 1, 10, 0.1)
    load_optimizer(folder, restored, optimizer2, rank=0)
    scheduler2.load_state_dict(state["scheduler"])
    model.train()
    for m, opt, sched in ((model, optimizer, scheduler), (restored, optimizer2, scheduler2)):
        train_step(m, opt, sched, _batches(m, 30), device=CPU, grad_clip=1.0)
    ours, theirs = dict(model.named_parameters()), dict(restored.named_parameters())
    for name in trainable_names(model):
        torch.testing.assert_close(theirs[name], ours[name], atol=0, rtol=0, msg=name)


def test_resume_onto_other_starting_weights_fails_loudly(tokenizer, trained):
    folder, *_ = trained
    other = _adapted(tokenizer, base_seed=1)
    saved = torch.load(folder / STATE_FILE, weights_only=False)["lora_base_digest"]
    with pytest.raises(RuntimeError, match="frozen weights this LoRA run started from changed"):
        check_frozen_digest(other, saved, key="sft.lora")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_workers_train_adapters_and_resume(strategy, tokenizer, tmp_path):
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tokenizer_dir))
    mp.spawn(
        lora_parallel_worker, args=(2, _free_port(), strategy, str(tokenizer_dir), str(tmp_path)), nprocs=2
    )
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert any(is_lora_name(n) for n in resumed["original"])
    for name, value in resumed["original"].items():
        torch.testing.assert_close(resumed["restored"][name], value, atol=1e-6, rtol=1e-5, msg=name)
    config = json.loads((tmp_path / "ckpt" / MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["MM1ForConditionalGeneration"]
    weights = load_file(str(tmp_path / "ckpt" / MODEL_DIR / "model.safetensors"))
    assert not any(is_lora_name(k) or ".base_layer." in k for k in weights)


@pytest.mark.e2e
def test_a_lora_run_continues_with_more_steps(ingested, tmp_path, ray_session):
    """As test_finished_run_continues_with_more_steps, with LoRA: the resumed run rebuilds the random init,
    loads the trainable tensors and the optimizer, and AdamW's step counts all steps, on adapters only."""
    from mm1.train.launch import fit_stage

    common = dict(
        batch_size=4,
        grad_accum=2,
        lr=1e-3,
        warmup_steps=2,
        checkpoint_every=3,
        log_every=3,
        max_failures=0,
        freeze=["vision"],
        lora=tiny_lora(),
    )

    def fit(steps: int):
        return fit_stage(
            stage_name="sft",
            stage=TrainConfig(steps=steps, **common),
            label="lora",
            run_name="lora",
            storage_path=str(tmp_path / "ray"),
            dataset=ingested.dataset(),
            model_cfg=ingested.model_cfg,
            tokenizer_dir=ingested.tokenizer_dir,
            seq_len=SEQ_LEN,
        )

    first = fit(4)
    assert [r["step"] for r in first.history] == [1, 2, 3, 4]
    counts = first.trainable_params
    assert counts["lora"] > 0 and counts["vision"] == 0 and counts["llm"] == 0 and counts["connector"] > 0
    assert first.history[0]["trainable_params"] == counts

    second = fit(6)
    assert [r["step"] for r in second.history] == list(range(1, 7))
    assert second.history[:4] == first.history
    assert second.history[4]["resumed_from"] == 4 and second.history[4]["trainable_params"] == counts
    final = Path(second.checkpoints[-1]["uri"]).parent
    optimizer = torch.load(final / OPTIMIZER_FILE, weights_only=False)["state"]
    assert set(optimizer) == set(load_file(str(final / TRAINABLE_FILE)))
    assert {float(s["step"]) for s in optimizer.values()} == {6.0}, "AdamW's step counts all 6 steps"
    model, _ = load_for_inference(second.checkpoints[-1]["uri"])
    assert not any(is_lora_name(n) for n, _ in model.named_parameters())
