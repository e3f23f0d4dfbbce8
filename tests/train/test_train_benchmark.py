"""benchmarks/train.py's own pieces: no test ran the script, and its ingest had stopped working unnoticed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_ingests_its_corpus(tmp_path, ray_session):
    out = _bench_module().ingest(tmp_path, 0.05)
    assert (out / "stats.json").exists()
    assert any((out / "pretrain").iterdir()) and (out / "tokenizer").is_dir()


def test_steady_state_sums_tokens_images_and_label_positions_after_the_warmup():
    rows = [
        {"step": step, "time": float(step), "tokens": 100, "sub_images": 2, "label_tokens": 40}
        for step in range(6)
    ]
    steady = _bench_module().steady(rows, warmup=2)
    assert steady["steps"] == 3
    assert (steady["tokens"], steady["sub_images"], steady["label_tokens"]) == (300, 6, 120)
    assert steady["tokens_per_s"] == 100.0 and steady["median_step_s"] == 1.0
