"""LoRA adapters (mm1.model.lora): targets resolved inside the declared parts, what trains beside the declared
freezing, and the merge: the merged plain model answers exactly like the adapted one."""

from __future__ import annotations

import pytest
import torch
from model_helpers import random_image

from mm1.config_sections import LoraConfig
from mm1.data.chat import IMAGE
from mm1.model import MM1ForConditionalGeneration, generate_answers
from mm1.model.lora import add_lora, is_lora_name, merged_state_dict, resolve_targets, trainable_by_part


def _randomize_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """peft starts lora_B at zero (the adapted model = the base); give the adapters a real effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_lora_name(name):
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)


def test_targets_stay_inside_the_declared_parts(model):
    names = resolve_targets(model, LoraConfig(r=4, target_modules=["q_proj", "self_attn.v_proj"]))
    layers = model.config.text_config.num_hidden_layers
    assert len(names) == 2 * layers and all(n.startswith("language_model.") for n in names)
    vision = resolve_targets(model, LoraConfig(r=4, target_modules=["q_proj"], parts=["vision"]))
    assert vision and all(n.startswith("vision_tower.") for n in vision)


def test_a_target_that_matches_nothing_names_the_key_and_the_layers_there(model):
    with pytest.raises(ValueError) as err:
        add_lora(model, LoraConfig(r=4, target_modules=["q_proj", "qkv"]), key="sft.lora")
    message = str(err.value)
    assert "sft.lora.target_modules" in message and "['qkv']" in message
    assert "o_proj" in message and "gate_proj" in message  # the Linear layers the LLM has


def test_a_frozen_part_gets_no_adapters(model):
    with pytest.raises(ValueError, match=r"sft\.lora\.parts \['llm'\] are also frozen"):
        add_lora(model, LoraConfig(r=4), frozen=["llm"], key="sft.lora")


def test_lora_on_the_llm_with_the_connector_in_full_and_the_vision_tower_frozen(model):
    before = {part: sum(p.numel() for p in m.parameters()) for part, m in model.named_children()}
    add_lora(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), frozen=["vision"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(is_lora_name(n) or n.startswith("connector.") for n in trainable)
    assert any(n.startswith("connector.") for n in trainable)
    counts = trainable_by_part(model)
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    q_out, v_out = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
    per_layer = 4 * (text.hidden_size + q_out) + 4 * (text.hidden_size + v_out)
    assert counts["lora"] == text.num_hidden_layers * per_layer
    assert counts["vision"] == 0 and counts["llm"] == 0
    assert counts["connector"] == before["connector"]
    assert counts["all"] == sum(before.values()) + counts["lora"]


def test_merged_weights_equal_peft_own_merge(model):
    import peft

    lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "o_proj", "down_proj"])
    add_lora(model, lora)
    _randomize_adapters(model)
    merged = merged_state_dict(model.state_dict(), lora)
    for module in model.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.merge()  # peft's own arithmetic, in place
    ours = {k: v for k, v in model.state_dict().items() if not is_lora_name(k)}
    ours = {k.replace(".base_layer.", "."): v for k, v in ours.items()}
    assert set(ours) == set(merged)
    for name, value in merged.items():
        torch.testing.assert_close(value, ours[name], msg=name)


def test_the_merged_plain_model_answers_like_the_adapted_one(model, processor):
    lora = LoraConfig(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    add_lora(model, lora, frozen=["vision"])
    _randomize_adapters(model, seed=1)
    model.eval()
    plain = MM1ForConditionalGeneration(model.config)
    plain.load_state_dict(merged_state_dict(model.state_dict(), lora))
    plain.generation_config = model.generation_config
    plain.eval()
    assert not any(is_lora_name(n) for n, _ in plain.named_parameters())
    chats = [
        ([{"role": "user", "content": f"{IMAGE}\nwhat shape is in the picture?"}], [random_image(i)])
        for i in range(3)
    ] + [([{"role": "user", "content": "how many circles are there?"}], [])]
    adapted = generate_answers(model, processor, chats, max_new_tokens=12)
    merged = generate_answers(plain, processor, chats, max_new_tokens=12)
    assert merged == adapted and any(adapted)


def test_model_info_counts_what_a_lora_stage_trains_on_the_meta_device():
    from mm1.model.info import format_trainable_info, model_info, trainable_info

    full = trainable_info("tiny")
    info = model_info("tiny")
    assert full["lora"] == 0 and full["all"] == info["total_params"]
    assert (full["vision"], full["connector"]) == (info["vision_params"], info["connector_params"])
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"])
    counts = trainable_info("tiny", ["vision"], lora)
    assert counts["vision"] == counts["llm"] == 0 and counts["connector"] == info["connector_params"]
    assert counts["lora"] > 0 and counts["all"] == info["total_params"] + counts["lora"]
    table = format_trainable_info("tiny", ["vision"], lora)
    assert "LoRA r=8 on llm: q_proj,v_proj" in table and "tiny" in table.splitlines()[-1]
