"""Every name a workflow file may pick a model or a benchmark by, and what each name stands for.

One home per set of names:
  PRESETS          model sizes: MM1Config kwargs, built by mm1.model.presets (`mm1 model-info` lists them)
  CONNECTORS       vision-language connectors, built by mm1.model.connectors
  FREEZABLE_PARTS  model parts a training stage may freeze, applied by mm1.model.freeze
  BENCHMARKS       evaluation benchmarks, built and scored by mm1.eval.benchmarks
mm1.config validates a workflow against these tables instead of restating them. This module imports nothing
heavy, so `mm1 validate` stays torch-free; it sits outside mm1/model because importing that package builds
the model classes (torch, transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ------------------------------------------------------------------------------------------------ presets
# Plain MM1Config kwargs. The paper-scale ones use MM1's final choices (ViT-H/14 at 378 px, C-Abstractor with
# 144 tokens) and Llama-style LLMs sized so the totals land near the nominal 3B / 7B / 30B (check with
# `mm1 model-info PRESET`). `tiny` trains on a laptop CPU in minutes.

# ViT-H/14 at 378 px: MM1's final image encoder (also MM1Config's default vision tower).
VIT_H_378 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 378,
}


def _llama(hidden: int, layers: int, heads: int, ffn: int, vocab: int = 32000) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": ffn,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }


def _paper_scale(llm: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "vision_config": dict(VIT_H_378),
        "text_config": llm,
        "connector_type": "c-abstractor",
        "num_image_tokens": 144,
        "connector_depth": 3,
        "image_size": 378,
        **extra,
    }


def _tiny(vision: dict[str, Any]) -> dict[str, Any]:
    """The laptop-sized MM1 around a given encoder: an 8x8 grid of 128-wide features at 64 px."""
    return {
        "vision_config": vision,
        "text_config": {
            **_llama(hidden=256, layers=4, heads=4, ffn=704, vocab=512),
            "max_position_embeddings": 2048,
        },
        "connector_type": "c-abstractor",
        "num_image_tokens": 16,
        "connector_depth": 1,
        "image_size": 64,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _tiny(
        {
            "model_type": "clip_vision_model",
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "patch_size": 8,
            "image_size": 64,
        }
    ),
    # tiny with a small ResNet for the encoder. From scratch, a ViT learns colours and counts quickly but
    # object shape slowly; convolutions (a stride-2 stem, max-pool, batch norm) learn shape within a few
    # hundred steps (see workflows/quickstart.yaml).
    "tiny-cnn": _tiny(
        {
            "model_type": "resnet",
            "embedding_size": 32,
            "hidden_sizes": [64, 128],
            "depths": [1, 1],
            "layer_type": "basic",
            "downsample_in_first_stage": False,
        }
    ),
    "mm1-3b": _paper_scale(_llama(hidden=2560, layers=28, heads=32, ffn=6912)),
    "mm1-7b": _paper_scale(_llama(hidden=4096, layers=30, heads=32, ffn=11008)),
    "mm1-30b": _paper_scale(_llama(hidden=6656, layers=54, heads=52, ffn=17920)),
    "mm1-3b-moe": _paper_scale(
        _llama(hidden=2560, layers=28, heads=32, ffn=6912), moe_num_experts=64, moe_every=2
    ),
    "mm1-7b-moe": _paper_scale(
        _llama(hidden=4096, layers=30, heads=32, ffn=11008), moe_num_experts=32, moe_every=4
    ),
}


# --------------------------------------------------------------------------------------------- connectors
@dataclass(frozen=True)
class ConnectorSpec:
    # The class in mm1.model.connectors that builds it (its `from_config(MM1Config)`).
    builder: str
    # Pools the patch grid to sqrt(k) x sqrt(k): num_image_tokens must be a perfect square.
    square_tokens: bool


# What each does: mm1.model.connectors' docstring (MM1's lesson: the type matters little, the token count
# and the resolution matter most).
CONNECTORS: dict[str, ConnectorSpec] = {
    "avgpool": ConnectorSpec("AvgPoolConnector", square_tokens=True),
    "attnpool": ConnectorSpec("AttnPoolConnector", square_tokens=False),
    "c-abstractor": ConnectorSpec("CAbstractor", square_tokens=True),
}

# ------------------------------------------------------------------------------------------ freezable parts
# What a training stage may freeze (`freeze: [vision]`) -> the MM1ForConditionalGeneration attribute holding
# it; `llm` includes the token embeddings and the LM head.
FREEZABLE_PARTS: dict[str, str] = {
    "vision": "vision_tower",
    "connector": "connector",
    "llm": "language_model",
}


# --------------------------------------------------------------------------------------------- benchmarks
@dataclass(frozen=True)
class BenchmarkSpec:
    # How it is asked and scored (mm1.eval.benchmarks): vqa (short answers, VQA accuracy) or caption (CIDEr-D).
    kind: str
    # The evaluate.* keys naming the files it reads (empty: generated Shapes scenes).
    needs: tuple[str, ...] = ()
    # k-shot: document prompts with k demonstrations for each k in evaluate.kshot, metrics named METRIC@K,
    # asked of pre-trained checkpoints (mm1.eval.evaluate); otherwise zero-shot chat prompts.
    kshot: bool = False
    # Where its items come from: shapes (held-out scenes), coco (caption annotations), vqav2 (questions).
    data: str = "shapes"

    def metrics(self) -> tuple[str, ...] | None:
        """The METRIC names it reports (before any @K), or None where they come from the data (VQAv2's
        answer types beside `overall`)."""
        if self.kind == "caption":
            return ("cider",)
        return ("overall", *SHAPES_VQA_TYPES) if self.data == "shapes" else None


# The per-type metrics of a Shapes VQA benchmark: SHAPES.md's question types less `caption` (a benchmark of
# its own), then the kind splits (mm1.eval.heldout.SPLIT_TYPES); tests/test_registry.py checks both lists.
SHAPES_VQA_TYPES = (
    "count_all",
    "count_kind",
    "colour_of",
    "shape_of",
    "exists",
    "word",
    "count_kind.present",
    "count_kind.uniform",
    "exists.present",
    "exists.uniform",
)


COCO_FILES = ("coco_annotations", "coco_images")
VQAV2_FILES = ("vqav2_questions", "vqav2_annotations", "vqav2_images")

BENCHMARKS: dict[str, BenchmarkSpec] = {
    "shapes-vqa": BenchmarkSpec("vqa"),
    "shapes-caption": BenchmarkSpec("caption"),
    "shapes-kshot": BenchmarkSpec("caption", kshot=True),  # k-shot Shapes captioning
    "shapes-vqa-kshot": BenchmarkSpec("vqa", kshot=True),
    "coco-caption": BenchmarkSpec("caption", needs=COCO_FILES, data="coco"),
    "coco-caption-kshot": BenchmarkSpec("caption", needs=COCO_FILES, kshot=True, data="coco"),
    "vqav2": BenchmarkSpec("vqa", needs=VQAV2_FILES, data="vqav2"),
    "vqav2-kshot": BenchmarkSpec("vqa", needs=VQAV2_FILES, kshot=True, data="vqav2"),
}


def missing_benchmark_files(benchmark: str, evaluate: Any) -> list[str]:
    """The `evaluate.KEY`s that `benchmark` needs and `evaluate` (an EvaluateConfig) leaves empty."""
    return [f"evaluate.{key}" for key in BENCHMARKS[benchmark].needs if not getattr(evaluate, key)]
