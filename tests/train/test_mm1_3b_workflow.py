"""The paper-scale recipe (workflows/mm1-3b.yaml) validates and says what MM1.md says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mm1.cli import main
from mm1.config import load
from mm1.model import MM1ForConditionalGeneration, mm1_config, model_info
from mm1.train.loop import non_embedding_params
from mm1.train.schedule import choose_lr

RECIPE = Path(__file__).resolve().parents[2] / "workflows" / "mm1-3b.yaml"


@pytest.fixture(scope="module")
def wf():
    return load(RECIPE)


def test_mm1_validate_accepts_it(capsys):
    assert main(["validate", str(RECIPE)]) == 0
    assert "OK" in capsys.readouterr().out


def test_model_and_data_are_mm1s_final_choices(wf):
    assert wf.model.preset == "mm1-3b" and wf.model.image_size == 378
    assert (wf.model.connector.type, wf.model.connector.num_tokens) == ("c-abstractor", 144)
    mix = wf.data.mixture
    assert (mix.interleaved, mix.captions, mix.text) == (0.45, 0.45, 0.10)
    assert (wf.packing.seq_len, wf.packing.max_images) == (4096, 16)
    config = mm1_config("mm1-3b", image_size=378)
    assert (config.vision_config.hidden_size, config.vision_config.patch_size) == (1280, 14)  # ViT-H/14


def test_pretraining_schedule(wf):
    p = wf.pretrain
    assert (p.steps, p.batch_size, p.warmup_steps, p.min_lr_ratio) == (200_000, 512, 2000, 0.1)
    assert p.lr is None and p.weight_decay is None and p.freeze == []
    assert (p.precision, p.strategy, p.use_gpu) == ("bf16", "fsdp", True)
    s = wf.sft
    assert (s.steps, s.batch_size, s.lr, s.freeze) == (10_000, 256, 1e-5, [])
    # per-block compile on both; recompute every 2nd block at 378 px, every block at 672 px x 5 crops
    assert (p.activation_checkpointing, p.compile, p.cpu_offload) == ("selective", True, False)
    assert (s.activation_checkpointing, s.compile, s.cpu_offload) == ("full", True, False)


def test_the_cluster_has_a_gpu_per_worker(wf):
    assert wf.cluster.backend == "k8s"
    gpus = sum(g.replicas * g.gpus for g in wf.cluster.worker_groups)
    for stage in (wf.pretrain, wf.sft):
        assert stage.num_workers <= gpus
        assert stage.batch_size % (stage.num_workers * stage.grad_accum) == 0


def test_scaling_law_lr_for_the_presets_n():
    """N as the loop counts it on the built model (meta device: no memory) = model_info's N; its LR ~5.8e-5."""
    n = model_info("mm1-3b")["non_embedding_params"]
    with torch.device("meta"):
        model = MM1ForConditionalGeneration(mm1_config("mm1-3b", image_size=378))
    assert non_embedding_params(model) == n
    lr, weight_decay, why = choose_lr(None, None, n)
    assert lr == pytest.approx(5.8e-5, rel=0.15)
    assert weight_decay == pytest.approx(0.1 * lr)
    assert "scaling law" in why


def test_it_renders_to_valid_kuberay_manifests_with_gpu_workers(wf):
    from mm1.k8s.render import render_all
    from mm1.k8s.validate import validate_all

    objs = render_all(wf, RECIPE.read_text(), "s3://mm1-runs/paper/mm1-3b/select/winner")
    assert [o["kind"] for o in objs] == ["ConfigMap", "RayJob", "RayService"]
    assert validate_all(objs) == []
    (group,) = objs[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
