"""DDP and FSDP2 on two CPU processes (gloo, no Ray): the parallel step equals one step on all the data, and a
checkpoint restores model and optimizer so that training continues identically. bf16 and GPUs are not
covered here (no GPU on this machine)."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import concat, make_batch, make_model, make_tokenizer, parallel_worker, sgd

from mm1.train.step import train_step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer().save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def one_big_batch(tokenizer_dir):
    """The reference: one process, one micro-batch holding both workers' two micro-batches each."""
    from transformers import AutoTokenizer

    model = make_model(AutoTokenizer.from_pretrained(tokenizer_dir))
    cfg = model.config
    everything = concat(
        [make_batch(s, 2, 24, cfg.image_token_id, cfg.text_config.vocab_size) for s in range(4)]
    )
    stats = train_step(model, *sgd(model), [everything], device=torch.device("cpu"), grad_clip=1e9)
    return stats, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_workers_step_and_resume(strategy, tokenizer_dir, one_big_batch, tmp_path):
    mp.spawn(parallel_worker, args=(2, _free_port(), strategy, tokenizer_dir, str(tmp_path)), nprocs=2)

    stats, weights = one_big_batch
    got = torch.load(tmp_path / "sgd.pt", weights_only=False)
    assert got["loss"] == pytest.approx(stats.loss, rel=1e-5), "loss is the mean over all workers' tokens"
    assert got["tokens"] == stats.tokens
    assert set(got["weights"]) == set(weights)
    for name, value in weights.items():
        torch.testing.assert_close(got["weights"][name], value, atol=1e-6, rtol=1e-5, msg=name)

    config = json.loads((tmp_path / "ckpt" / "model" / "config.json").read_text())
    assert config["architectures"] == ["MM1ForConditionalGeneration"]  # not FSDP's renamed class
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    for name, value in resumed["original"].items():
        torch.testing.assert_close(resumed["restored"][name], value, atol=1e-6, rtol=1e-5, msg=name)
