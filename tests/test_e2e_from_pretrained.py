"""End to end from pretrained backbones (issue 16) with a high-resolution, split SFT stage (issue 20.2): the
tiny SigLIP tower and Qwen2-style LLM of tests/pretrained_fixtures.py go through every step of
workflows/from-pretrained.yaml on a real Ray, and the served winner answers through the LLM's template."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "from-pretrained.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_config(checkpoint_uri: str) -> dict:
    return json.loads((Path(checkpoint_uri) / "config.json").read_text())  # the checkpoint's model folder


@pytest.mark.e2e
def test_reduced_run_from_pretrained_backbones_with_high_resolution_sft(
    pretrained_dir, tmp_path, ray_session
):
    from mm1.config import load
    from mm1.workflow.local import run_local

    port = _free_port()
    overrides = [
        f"model.vision={pretrained_dir / 'siglip'}",
        f"model.llm={pretrained_dir / 'qwen2'}",
        f"storage.root={tmp_path}",
        "data.shapes.caption_samples=160",
        "data.shapes.interleaved_docs=40",
        "data.shapes.text_samples=40",
        "data.shapes.sft_samples=160",
        "pretrain.steps=4",
        "pretrain.checkpoint_every=4",
        "pretrain.warmup_steps=1",
        "pretrain.cpus_per_worker=1",
        "sft.steps=4",
        "sft.checkpoint_every=4",
        "sft.warmup_steps=1",
        "sft.cpus_per_worker=1",
        # SFT at twice the tower's 32 px, split into 4 crops + overview, in longer sequences
        "sft.image_size=64",
        "sft.image_grid=2",
        "sft.seq_len=384",
        "evaluate.num_scenes=10",
        "evaluate.num_questions=20",
        "deploy.enabled=true",
        f"deploy.port={port}",
        "deploy.keep_serving=false",
    ]
    wf = load(WORKFLOW, overrides)
    assert wf.model.image_size is None  # the file names none: the tower's own
    logs: list[str] = []
    started = time.perf_counter()
    try:
        manifests = run_local(wf, log=logs.append)
    finally:
        from ray import serve

        serve.shutdown()  # the session's Ray is shared: later tests start Serve on ports of their own
    wall = time.perf_counter() - started
    assert set(manifests) == {"ingest", "pretrain", "sft", "evaluate", "select", "deploy", "report"}

    (pretrain,) = manifests["pretrain"]["outputs"]["runs"].values()
    (sft,) = manifests["sft"]["outputs"]["runs"].values()
    pre_cfg = _model_config(pretrain["checkpoints"][-1]["uri"])
    sft_cfg = _model_config(sft["checkpoints"][-1]["uri"])
    # Pre-training at the SigLIP tower's own 32 px with its statistics; SFT switched to 64 px with a split.
    assert (pre_cfg["image_size"], pre_cfg["image_grid"]) == (32, 1)
    assert (sft_cfg["image_size"], sft_cfg["image_grid"]) == (64, 2)
    assert sft_cfg["image_layouts"] == [[1, 4], [2, 2], [4, 1]]
    assert sft_cfg["image_mean"] == [0.5, 0.5, 0.5]
    assert sft_cfg["vision_config"]["image_size"] == 32  # the table stays native; 64 px interpolates it
    # The LLM's own tokenizer and template travel with the checkpoint.
    sft_dir = Path(sft["checkpoints"][-1]["uri"])
    template = json.loads((sft_dir / "tokenizer_config.json").read_text()).get("chat_template") or (
        (sft_dir / "chat_template.jinja").read_text() if (sft_dir / "chat_template.jinja").exists() else ""
    )
    assert "<|im_start|>" in template

    results = manifests["evaluate"]["outputs"]
    assert results, "evaluation produced no scores"
    deploy = manifests["deploy"]["outputs"]
    assert deploy["sample"]["answer"] is not None
    parity = deploy["parity"]
    assert parity is not None and parity["tokens"] > 0, parity  # the gate raises when it fails
    assert parity["max_abs_logprob_diff"] <= parity["tolerance"]
    print(f"\nfrom-pretrained reduced run (SigLIP + Qwen2 fixtures, SFT at 64 px split): {wall:.1f} s wall")
