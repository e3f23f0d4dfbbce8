"""`build_mm1`, the one factory the rest of the platform calls, and `mm1_config`, the config it builds.

The named model sizes (plain MM1Config kwargs) are mm1.registry.PRESETS, where the workflow schema reads their
names too; `mm1 model-info PRESET` shows their sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mm1.data.chat import IMAGE, stop_token_ids
from mm1.data.preprocess import image_processor_stats
from mm1.model.configuration import MM1Config
from mm1.model.modeling import MM1ForConditionalGeneration, upcycle_to_moe
from mm1.model.vision import vision_config_from_pretrained
from mm1.registry import PRESETS

__all__ = ["PRESETS", "build_mm1", "mm1_config"]

logger = logging.getLogger(__name__)


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


def _tokenizer_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    vocab = tokenizer.get_vocab()
    missing = [
        name for name, tok in (("eos", tokenizer.eos_token), ("pad", tokenizer.pad_token)) if tok is None
    ]
    missing += [IMAGE] if IMAGE not in vocab else []
    if missing:
        raise ValueError(
            f"tokenizer lacks {missing}; load it with mm1.data.tokenizer.load_tokenizer (it adds {IMAGE} and "
            "sets eos/pad where missing)"
        )
    return {
        "pad": tokenizer.pad_token_id,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "image": vocab[IMAGE],
    }


def check_llm_vocabulary(tokenizer: PreTrainedTokenizerBase, llm: str, llm_rows: int) -> None:
    """The tokenizer must speak the LLM's vocabulary: every token of the LLM's own tokenizer (when the LLM
    ships one) has the same id in it, and nothing but tokens it adds lies past the LLM's embedding rows."""
    from mm1.data.chat import SPECIAL_TOKENS

    try:
        own = AutoTokenizer.from_pretrained(llm).get_vocab()
    except (OSError, ValueError):
        own = None
    vocab = tokenizer.get_vocab()
    if own is not None:
        wrong = [t for t, i in own.items() if vocab.get(t) != i]
        if wrong:
            raise ValueError(
                f"the tokenizer does not match the LLM {llm}: {len(wrong)} of its {len(own)} tokens have other "
                f"ids or are missing (e.g. {wrong[:3]}); use the LLM's tokenizer (leave data.tokenizer empty)"
            )
    else:  # an LLM without tokenizer files: only the sizes can be compared
        base = [t for t in vocab if t not in SPECIAL_TOKENS]
        if len(base) > llm_rows:
            raise ValueError(
                f"the tokenizer has {len(base)} tokens (before MM1's) but the LLM {llm} has {llm_rows} embedding "
                "rows: use the LLM's tokenizer"
            )


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
        # The tower's own pixel statistics (and size), from its image-processor config when it has one.
        stats = image_processor_stats(vision)
        if stats is not None:
            kwargs["image_mean"], kwargs["image_std"] = stats["image_mean"], stats["image_std"]
            kwargs["image_size"] = stats["image_size"] or kwargs["image_size"]
    if llm is not None:
        kwargs["text_config"] = AutoConfig.from_pretrained(llm).to_dict()
    text = kwargs["text_config"]
    if tokenizer is not None:
        ids = _tokenizer_ids(tokenizer)
        if llm is not None:
            # The LLM keeps its rows (Qwen2 pads past its tokenizer); tokens MM1 adds past them get new rows.
            check_llm_vocabulary(tokenizer, llm, text["vocab_size"])
            vocab = max(text["vocab_size"], len(tokenizer))
        else:
            vocab = len(tokenizer)
        text.update(
            vocab_size=vocab, pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"]
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
    vision: str | None = None,
    llm: str | None = None,
    **options: Any,
) -> MM1ForConditionalGeneration:
    """Build an MM1 model: random init from the preset, or with pretrained `vision` / `llm` weights (HF name or
    local path); `options` are mm1_config's (vocab_size, image_size, connector_type, ..., overrides). With a
    tokenizer, vocab size and the pad/bos/eos/image ids come from it (mm1.data.chat tokens). With `vision` and
    no `image_size`, the encoder's native resolution is used. An MoE preset on a pretrained
    `llm` is built dense, loaded, then upcycled, so every expert starts as a copy of the pretrained FFN.
    """
    config = mm1_config(preset, tokenizer, vision=vision, llm=llm, **options)
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
    rows = pretrained.get_input_embeddings().weight.shape[0]
    if vocab < rows:
        raise ValueError(
            f"the model's vocabulary ({vocab}) is smaller than the LLM {llm}'s {rows} embedding rows: build it "
            "with the LLM's tokenizer (mm1.data.tokenizer.load_tokenizer), never cut an LLM's embeddings"
        )
    if vocab > rows:
        # The one resize: rows for the tokens MM1 added (<image>, ...), started at the mean embedding.
        logger.info("LLM %s: %d -> %d embedding rows for the tokens MM1 adds", llm, rows, vocab)
        pretrained.resize_token_embeddings(vocab, mean_resizing=True)
    missing, unexpected = model.language_model.load_state_dict(pretrained.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"LLM weights from {llm} do not fit: missing {missing}, unexpected {unexpected}")
