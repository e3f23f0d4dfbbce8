"""benchmarks/mfu.py on a CPU: the tiny preset for a few steps prints every figure and says it is no GPU one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mm1.data.chat import IGNORE_INDEX
from mm1.model import mm1_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "mfu.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_mfu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mfu_benchmark_runs_on_cpu_and_prints_its_figures(tmp_path):
    out = tmp_path / "mfu.json"
    env = {**os.environ, "MM1_CACHE_DIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    args = ["--steps", "2", "--warmup", "1", "--seq-len", "64", "--images-per-row", "2", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    for field in ("step time", "tokens/s", "images/s", "peak memory", "FLOPs/step", "device peak", "MFU"):
        assert f"\n{field} " in f"\n{text}", (field, text)
    assert "tiny on 1 x cpu" in text and "not a GPU figure" in text
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and not result["gpu_figure"] and result["steps"] == 2
    assert result["tokens_per_s"] > 0 and result["images_per_s"] > 0 and result["peak_memory_gib"] > 0
    assert 0 < result["mfu"] < 1
    # Vision tower + connector + LLM, for 64 real positions and 2 images per step.
    assert result["flops_per_step"] == pytest.approx(
        result["vision_connector_flops_per_step"] + result["llm_flops_per_step"]
    )
    assert result["vision_connector_flops_per_step"] > 0


def test_packed_rows_are_documents_of_image_then_text():
    bench = _bench_module()
    config = mm1_config("tiny")
    rows = bench.packed_rows(config, 2, 64, 2, torch.Generator().manual_seed(0))
    ids, labels, positions = rows["input_ids"], rows["labels"], rows["position_ids"]
    tokens = config.image_tokens_per_image  # 16
    assert ids.shape == labels.shape == positions.shape == (2, 64)
    assert rows["pixel_values"].shape == (4, 3, config.image_size, config.image_size)
    assert (ids == config.image_token_id).sum() == 2 * 2 * tokens
    assert torch.equal(labels == IGNORE_INDEX, ids == config.image_token_id)  # loss on text only
    assert positions[0, 0] == 0 and positions[0, 32] == 0 and positions[0, 63] == 31  # two documents of 32
    assert (ids[:, :tokens] == config.image_token_id).all() and (
        ids[:, 32 : 32 + tokens] == config.image_token_id
    ).all()
    assert rows["attention_mask"].all()  # no padding


def test_compile_and_checkpointing_flags_reach_wrap_model_only_if_it_takes_them(monkeypatch):
    bench = _bench_module()
    args = bench.parse_args(["--compile", "--ac", "selective"])

    def old_wrap_model(model, strategy, precision, device):
        return model

    monkeypatch.setattr(bench, "wrap_model", old_wrap_model)
    assert bench.wrap_options(bench.parse_args([])) == {}
    with pytest.raises(SystemExit, match="compile"):
        bench.wrap_options(args)

    def new_wrap_model(model, strategy, precision, device, activation_checkpointing="none", compile=False):
        return model

    monkeypatch.setattr(bench, "wrap_model", new_wrap_model)
    assert bench.wrap_options(args) == {"compile": True, "activation_checkpointing": "selective"}
