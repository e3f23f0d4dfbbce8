"""save_pretrained -> from_pretrained (safetensors) restores the model and the processor exactly."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import make_model, random_image
from transformers import AutoConfig, AutoModelForImageTextToText

from mm1.data.chat import IMAGE
from mm1.model import MM1ForConditionalGeneration, MM1Processor, load_for_inference, save_for_inference


def _inputs(processor):
    return processor.encode_chat([{"role": "user", "content": f"{IMAGE}\nwhat shape?"}], [random_image(0)])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"connector_type": "attnpool", "num_image_tokens": 9},
        {"connector_type": "avgpool", "image_grid": 2},
        {"moe_num_experts": 4, "moe_every": 2},
    ],
    ids=["c-abstractor", "attnpool", "avgpool-grid2", "moe"],
)
def test_save_load_gives_identical_logits(tokenizer, tmp_path, overrides):
    model = make_model(tokenizer, overrides=overrides)
    processor = MM1Processor.from_config(model.config, tokenizer)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mm1"

    loaded = MM1ForConditionalGeneration.from_pretrained(tmp_path).eval()
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(auto) is MM1ForConditionalGeneration
    assert isinstance(AutoConfig.from_pretrained(tmp_path), type(model.config))
    inputs = _inputs(processor)
    # Same weights, but loaded tensors may sit at other memory alignments, which changes CPU matmul kernels'
    # summation order: equal to float tolerance, not bit for bit.
    with torch.no_grad():
        expected = model(**inputs).logits
        assert torch.allclose(loaded(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
        assert torch.allclose(auto(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    for key, value in overrides.items():
        assert getattr(loaded.config, key) == value


def test_processor_round_trip(model, processor, tmp_path):
    processor.save_pretrained(tmp_path)
    settings = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert settings["image_tokens_per_image"] == 16 and settings["image_size"] == 64
    loaded = MM1Processor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    turns = [
        {"role": "user", "content": f"{IMAGE}\nhow many circles?"},
        {"role": "assistant", "content": "two"},
    ]
    assert loaded.encode_conversation(turns) == processor.encode_conversation(turns)
    a, b = _inputs(processor), _inputs(loaded)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert loaded.stop_token_ids() == processor.stop_token_ids()
    assert loaded.decode(a["input_ids"][0], skip_special_tokens=False) == processor.decode(
        a["input_ids"][0], skip_special_tokens=False
    )


def test_load_for_inference_needs_a_full_checkpoint(model, processor, tmp_path):
    model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json is missing"):
        load_for_inference(tmp_path)
    save_for_inference(model, processor, tmp_path)
    loaded, loaded_processor = load_for_inference(tmp_path)
    assert not loaded.training and loaded.dtype == torch.float32
    assert loaded_processor.image_tokens_per_image == processor.image_tokens_per_image


def test_processor_rejects_image_count_mismatch(processor):
    with pytest.raises(ValueError, match=r"1 <image> markers but 2 images"):
        processor.encode_chat(
            [{"role": "user", "content": f"{IMAGE} what?"}], [random_image(0), random_image(1)]
        )


def test_reloaded_model_has_no_parameter_without_a_gradient(model, processor, tmp_path):
    """A checkpoint resumed for training must not bring back unused (gradient-less) encoder parameters."""
    model.save_pretrained(tmp_path)
    loaded = MM1ForConditionalGeneration.from_pretrained(tmp_path).train()
    enc = processor.encode_conversation(
        [{"role": "user", "content": f"{IMAGE}\nwhat?"}, {"role": "assistant", "content": "a square"}]
    )
    out = loaded(
        input_ids=torch.tensor([enc.input_ids]),
        labels=torch.tensor([enc.labels]),
        pixel_values=processor.images_to_pixel_values([random_image(0)]),
    )
    out.loss.backward()
    without = [n for n, p in loaded.named_parameters() if p.requires_grad and p.grad is None]
    assert without == []
