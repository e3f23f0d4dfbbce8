"""Named model sizes and `build_mm1`, the one factory the rest of the platform calls.

Presets are plain MM1Config kwargs. The paper-scale ones use MM1's final choices (ViT-H/14 at 378 px,
C-Abstractor with 144 tokens) and Llama-style LLMs sized so the totals land near the nominal 3B / 7B / 30B
(check with `mm1 model-info PRESET`). `tiny` trains on a laptop CPU in minutes.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mm1.data.chat import BOS, EOS, IMAGE, PAD, stop_token_ids
from mm1.model.configuration import MM1Config
from mm1.model.modeling import MM1ForConditionalGeneration, upcycle_to_moe
from mm1.model.vision import vision_config_from_pretrained

# ViT-H/14 at 378 px: MM1's final image encoder.
_VIT_H_378 = {
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
        "vision_config": dict(_VIT_H_378),
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


def _field_names(config_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}


def _apply_overrides(kwargs: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Dotted keys: `text_config.num_hidden_layers`, `vision_config.hidden_size` or a top-level field."""
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section == "":
            target, valid, owner = kwargs, _field_names(MM1Config), "MM1Config"
        elif section in ("vision_config", "text_config"):
            target = kwargs[section]
            config_class = CONFIG_MAPPING[target["model_type"]]
            valid, owner = (
                _field_names(config_class) | set(config_class().to_dict()),
                f"{section} ({config_class.__name__})",
            )
        else:
            raise ValueError(
                f"unknown override {key!r}: the prefix must be 'vision_config.', 'text_config.' or none"
            )
        if name not in valid:
            raise ValueError(f"unknown override {key!r}: {owner} has no field {name!r}")
        target[name] = value


def _tokenizer_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    missing = [t for t in (PAD, BOS, EOS, IMAGE) if t not in vocab]
    if missing:
        raise ValueError(
            f"tokenizer lacks the special tokens {missing}; load it with mm1.data.tokenizer.load_tokenizer"
        )
    return {
        name: vocab[token] for name, token in (("pad", PAD), ("bos", BOS), ("eos", EOS), ("image", IMAGE))
    }


def mm1_config(
    preset: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    vocab_size: int | None = None,
    image_size: int | None = None,
    connector_type: str | None = None,
    num_image_tokens: int | None = None,
    image_grid: int | None = None,
    vision: str | None = None,
    llm: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> MM1Config:
    """The MM1Config `build_mm1` would build (no weights): preset, then arguments, then overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    kwargs = copy.deepcopy(PRESETS[preset])
    if vision is not None:
        kwargs["vision_config"] = vision_config_from_pretrained(vision).to_dict()
        # Its native resolution; a convolutional config may not record one (then the preset's size stays).
        kwargs["image_size"] = kwargs["vision_config"].get("image_size", kwargs["image_size"])
    if llm is not None:
        kwargs["text_config"] = AutoConfig.from_pretrained(llm).to_dict()
    text = kwargs["text_config"]
    if tokenizer is not None:
        ids = _tokenizer_ids(tokenizer)
        text.update(
            vocab_size=len(tokenizer),
            pad_token_id=ids["pad"],
            bos_token_id=ids["bos"],
            eos_token_id=ids["eos"],
        )
        kwargs["image_token_id"] = ids["image"]
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    for name, value in (
        ("image_size", image_size),
        ("connector_type", connector_type),
        ("num_image_tokens", num_image_tokens),
        ("image_grid", image_grid),
    ):
        if value is not None:
            kwargs[name] = value
    _apply_overrides(kwargs, overrides or {})
    return MM1Config(**kwargs)


def build_mm1(
    preset: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    vocab_size: int | None = None,
    image_size: int | None = None,
    connector_type: str | None = None,
    num_image_tokens: int | None = None,
    image_grid: int | None = None,
    vision: str | None = None,
    llm: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> MM1ForConditionalGeneration:
    """Build an MM1 model: random init from the preset, or with pretrained `vision` / `llm` weights (HF name or
    local path). With a tokenizer, vocab size and the pad/bos/eos/image ids come from it (mm1.data.chat tokens).
    With `vision` and no `image_size`, the encoder's native resolution is used. An MoE preset on a pretrained
    `llm` is built dense, loaded, then upcycled, so every expert starts as a copy of the pretrained FFN.
    """
    config = mm1_config(
        preset,
        tokenizer,
        vocab_size=vocab_size,
        image_size=image_size,
        connector_type=connector_type,
        num_image_tokens=num_image_tokens,
        image_grid=image_grid,
        vision=vision,
        llm=llm,
        overrides=overrides,
    )
    moe = (config.moe_num_experts, config.moe_every, config.moe_top_k)
    config.moe_num_experts = 0
    model = MM1ForConditionalGeneration(config)
    if vision is not None:
        model.vision_tower.load_pretrained(vision)
    if llm is not None:
        _load_llm(model, llm)
    if moe[0]:
        upcycle_to_moe(model, *moe)
    if tokenizer is not None:
        # Saved as generation_config.json beside the weights, so a bare generate() ends answers at <|end|>.
        model.generation_config.eos_token_id = stop_token_ids(tokenizer)
        model.generation_config.suppress_tokens = [config.image_token_id]
    return model


def _load_llm(model: MM1ForConditionalGeneration, llm: str) -> None:
    pretrained = AutoModelForCausalLM.from_pretrained(llm, dtype=model.dtype)
    vocab = model.config.text_config.vocab_size
    if pretrained.get_input_embeddings().weight.shape[0] != vocab:
        # Our special tokens may extend the LLM's vocabulary; new rows start at the mean embedding.
        pretrained.resize_token_embeddings(vocab)
    missing, unexpected = model.language_model.load_state_dict(pretrained.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"LLM weights from {llm} do not fit: missing {missing}, unexpected {unexpected}")
