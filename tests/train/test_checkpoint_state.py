"""The one checkpoint format resuming reads (no fallbacks for older layouts): train state with the data
position and RNG states, the metric history, the optimizer; and the typed job the Ray Train workers get."""

from __future__ import annotations

import dataclasses
import pickle
import random

import pytest
import torch
from train_helpers import make_batch, make_model, make_tokenizer

from mm1.config import ConnectorConfig, ModelConfig, TrainConfig
from mm1.model import MM1Processor
from mm1.train.checkpoint import (
    METRICS_FILE,
    MODEL_DIR,
    STATE_FILE,
    load_history,
    load_optimizer,
    load_train_state,
    save_checkpoint,
)
from mm1.train.data_position import DataPosition
from mm1.train.job import TrainJob
from mm1.train.launch import model_config
from mm1.train.schedule import build_optimizer, build_scheduler
from mm1.train.step import train_step


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A one-worker checkpoint of a tiny model, as the loop writes it."""
    folder = tmp_path_factory.mktemp("ckpt")
    tokenizer = make_tokenizer()
    model = make_model(tokenizer)
    optimizer = build_optimizer(model, 1e-3, 1e-4)
    scheduler = build_scheduler(optimizer, 1, 10, 0.1)
    vocab, image_id = model.config.text_config.vocab_size, model.config.image_token_id
    batch = make_batch(0, 2, 24, image_id, vocab)
    train_step(model, optimizer, scheduler, [batch], device=torch.device("cpu"), grad_clip=1.0)
    position = DataPosition(consumed=24, pass_sequences=40, pass_layout=(2, 2))
    history = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.25}]
    torch.manual_seed(123)
    random.seed(7)
    state = {"step": 2, "data_position": position.to_state()}
    processor = MM1Processor.from_config(model.config, tokenizer)
    save_checkpoint(folder, model, processor, optimizer, scheduler, state, history, rank=0)
    return folder, model, position, history


def test_train_state_holds_step_position_scheduler_and_rng(saved):
    folder, _, position, _ = saved
    expected_torch, expected_python = torch.get_rng_state(), random.getstate()
    torch.manual_seed(0)
    random.seed(0)
    state = load_train_state(folder, restore_rng=True)
    assert torch.equal(torch.get_rng_state(), expected_torch) and random.getstate() == expected_python
    assert state["step"] == 2 and "scheduler" in state and "rng" not in state
    assert DataPosition.from_state(state["data_position"]) == position


def test_the_model_folder_carries_its_code_for_plain_transformers(saved):
    """tests/model/test_remote_code.py loads such a folder without mm1; here: the loop's save writes it."""
    from mm1.model.remote_code import remote_code_files

    folder = saved[0] / MODEL_DIR
    assert all((folder / name).read_text() == text for name, text in remote_code_files().items())


def test_history_and_optimizer_come_back(saved):
    folder, model, _, history = saved
    assert load_history(folder) == history
    optimizer = build_optimizer(model, 1e-3, 1e-4)
    load_optimizer(folder, model, optimizer, rank=0)
    assert optimizer.state and all(int(s["step"]) == 1 for s in optimizer.state.values())


def test_a_checkpoint_missing_part_of_the_format_fails_loudly(saved, tmp_path):
    folder, *_ = saved
    (tmp_path / STATE_FILE).write_bytes((folder / STATE_FILE).read_bytes())
    with pytest.raises(FileNotFoundError):
        load_history(tmp_path)  # no metrics.jsonl: not a checkpoint this loop wrote
    torch.save({"step": 2}, tmp_path / STATE_FILE)
    with pytest.raises(KeyError):
        load_train_state(tmp_path, restore_rng=False)
    assert not (tmp_path / METRICS_FILE).exists()


def test_the_job_pickles_whole_and_types_the_model_section():
    model = ModelConfig(
        preset="tiny",
        image_size=32,
        connector=ConnectorConfig(type="avgpool", num_tokens=4),
        overrides={"text_config.num_hidden_layers": 2},
    )
    assert model_config(dataclasses.asdict(model)) == model  # plain data typed again
    assert model_config(model) is model
    job = TrainJob(
        stage_name="sft",
        stage=TrainConfig(steps=3, freeze=["vision"]),
        model=model,
        tokenizer_dir="/data/tokenizer",
        seq_len=128,
        label="sft:base",
        init_checkpoint="s3://bucket/run/pretrain/model",
    )
    config = pickle.loads(pickle.dumps(job.loop_config()))
    assert TrainJob.of(config) == job
    assert (
        TrainJob.of(config).stage.freeze == ["vision"] and TrainJob.of(config).model.connector.num_tokens == 4
    )
