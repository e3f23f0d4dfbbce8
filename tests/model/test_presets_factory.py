"""Presets, build_mm1 (tokenizer ids, overrides, pretrained towers by path) and model_info."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from mm1.data.chat import BOS, EOS, IMAGE, PAD, SPECIAL_TOKENS
from mm1.model import PRESETS, build_mm1, format_model_info, mm1_config, model_info
from mm1.model.moe import SparseMoE

NOMINAL = {"mm1-3b": 3e9, "mm1-7b": 7e9, "mm1-30b": 30e9}


@pytest.mark.parametrize("preset", sorted(NOMINAL))
def test_paper_presets_are_within_15_percent_of_nominal(preset):
    info = model_info(preset)
    assert abs(info["total_params"] / NOMINAL[preset] - 1) < 0.15, info["total_params"]
    parts = info["vision_params"] + info["connector_params"] + info["llm_params"] + info["embedding_params"]
    assert parts == info["total_params"]
    assert info["non_embedding_params"] == info["total_params"] - info["embedding_params"]
    assert info["image_tokens_per_image"] == 144 and info["image_size"] == 378
    # 6N dominates; the attention term adds a little at 4k context.
    assert 6 * info["llm_params"] < info["flops_per_token"] < 8 * info["total_params"]


def test_moe_presets_count_active_parameters():
    for preset, experts, every in (("mm1-3b-moe", 64, 2), ("mm1-7b-moe", 32, 4)):
        info = model_info(preset)
        dense = model_info(preset.removesuffix("-moe"))
        layers = PRESETS[preset]["text_config"]["num_hidden_layers"]
        assert info["experts"] == experts and info["moe_layers"] == layers // every
        assert info["total_params"] > 5 * dense["total_params"]
        # Top-2 of E experts: active = dense + one extra FFN per MoE layer + routers.
        ffn = 3 * dense_hidden_ffn(preset)
        router = info["moe_layers"] * experts * PRESETS[preset]["text_config"]["hidden_size"]
        assert info["active_params"] == dense["total_params"] + info["moe_layers"] * ffn + router


def dense_hidden_ffn(preset: str) -> int:
    text = PRESETS[preset]["text_config"]
    return text["hidden_size"] * text["intermediate_size"]


def test_tiny_is_a_few_million_parameters_and_the_table_lists_every_preset():
    assert 2e6 < model_info("tiny")["total_params"] < 10e6
    table = format_model_info()
    for preset in PRESETS:
        assert f"\n{preset} " in table
    assert "mm1-3b" in format_model_info("mm1-3b") and "tiny" not in format_model_info("mm1-3b")


def test_tokenizer_sets_vocab_and_special_ids(tokenizer):
    config = mm1_config("tiny", tokenizer)
    vocab = tokenizer.get_vocab()
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.image_token_id == vocab[IMAGE]
    assert (
        config.text_config.pad_token_id,
        config.text_config.bos_token_id,
        config.text_config.eos_token_id,
    ) == (
        vocab[PAD],
        vocab[BOS],
        vocab[EOS],
    )


def test_arguments_and_overrides_apply(tokenizer):
    config = mm1_config(
        "tiny",
        tokenizer,
        connector_type="avgpool",
        num_image_tokens=4,
        image_grid=3,
        overrides={"text_config.num_hidden_layers": 2, "vision_config.hidden_size": 64, "moe_num_experts": 2},
    )
    assert (config.connector_type, config.num_image_tokens, config.image_grid) == ("avgpool", 4, 3)
    assert config.image_tokens_per_image == 4 * 10
    assert config.text_config.num_hidden_layers == 2 and config.vision_config.hidden_size == 64
    assert config.moe_num_experts == 2


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("text_config.num_layerz", r"text_config \(LlamaConfig\) has no field 'num_layerz'"),
        ("vision_config.patchsize", r"vision_config \(CLIPVisionConfig\) has no field 'patchsize'"),
        ("num_image_token", r"MM1Config has no field 'num_image_token'"),
        ("llm.hidden_size", r"the prefix must be"),
    ],
)
def test_unknown_override_is_named(key, message):
    with pytest.raises(
        ValueError, match=rf"unknown override '{key}'.*{message}" if "prefix" not in message else message
    ):
        build_mm1("tiny", overrides={key: 1})


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'mm1-13b'.*'mm1-3b'"):
        build_mm1("mm1-13b")


def _tiny_llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    return LlamaForCausalLM(config)


def test_build_from_pretrained_vision_and_llm_paths(tokenizer, tmp_path):
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        )
    )
    vision.save_pretrained(tmp_path / "vision")
    # An LLM without tokenizer files whose vocabulary is the tokenizer's but for the tokens MM1 adds: its
    # embeddings grow, once, for them (a larger tokenizer would be refused: mm1.model.presets).
    rows = len(tokenizer) - len(SPECIAL_TOKENS)
    llm = _tiny_llama(vocab=rows)
    llm.save_pretrained(tmp_path / "llm")

    model = build_mm1(
        "tiny",
        tokenizer,
        vision=str(tmp_path / "vision"),
        llm=str(tmp_path / "llm"),
        overrides={"moe_num_experts": 4},
    )
    assert model.config.image_size == 32  # the encoder's native resolution unless image_size is given
    ours = model.vision_tower.model.state_dict()
    assert set(vision.state_dict()) - set(ours) == {"post_layernorm.weight", "post_layernorm.bias"}
    for name, param in ours.items():
        assert torch.equal(vision.state_dict()[name], param), name
    ours = model.language_model.state_dict()
    assert ours["model.embed_tokens.weight"].shape[0] == len(tokenizer)
    assert torch.equal(
        ours["model.embed_tokens.weight"][:rows], llm.state_dict()["model.embed_tokens.weight"]
    )
    assert torch.equal(
        ours["model.layers.0.self_attn.q_proj.weight"],
        llm.state_dict()["model.layers.0.self_attn.q_proj.weight"],
    )
    # MoE on a pretrained LLM: every expert starts as a copy of the pretrained FFN.
    moe = model.language_model.model.layers[1].mlp
    assert isinstance(moe, SparseMoE) and model.config.moe_num_experts == 4
    for weight in moe.experts.up_proj.weight:  # stacked [num_experts, out, in]
        assert torch.equal(weight, llm.model.layers[1].mlp.up_proj.weight)


def test_vision_half_of_a_full_clip_checkpoint(tokenizer, tmp_path):
    clip = CLIPModel(
        CLIPConfig(
            text_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
            },
            vision_config={
                "hidden_size": 48,
                "intermediate_size": 96,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "image_size": 32,
                "patch_size": 8,
            },
        )
    )
    clip.save_pretrained(tmp_path)
    model = build_mm1("tiny", tokenizer, vision=str(tmp_path), image_size=64)
    assert model.config.vision_config.hidden_size == 48 and model.config.image_size == 64
    expected = clip.vision_model.encoder.layers[0].mlp.fc1.weight
    assert torch.equal(model.vision_tower.model.encoder.layers[0].mlp.fc1.weight, expected)


def test_siglip_tower_by_path_has_no_cls_and_every_parameter_learns(tokenizer, tmp_path):
    siglip = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        )
    )
    siglip.save_pretrained(tmp_path)
    model = build_mm1("tiny", tokenizer, vision=str(tmp_path), image_size=64).train()
    pixels = torch.randn(1, 3, 64, 64)
    assert model.vision_tower(pixels).shape == (1, 64, 48)  # 8x8 patches, no prefix token to drop
    ids = torch.tensor([[1] + [model.config.image_token_id] * 16 + [20, 21]])
    model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
    names = [name for name, _ in model.vision_tower.named_parameters()]
    assert not any(name.startswith("model.head.") for name in names)  # the pooling head is dropped
    for name, param in model.vision_tower.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # Its pretrained weights were skipped, everything else loaded.
    expected = siglip.encoder.layers[1].mlp.fc2.weight
    assert torch.equal(model.vision_tower.model.encoder.layers[1].mlp.fc2.weight, expected)
