"""Convolutional vision towers (HF ResNet, ConvNeXt): their feature map becomes the patch sequence."""

from __future__ import annotations

import pytest
import torch
from model_helpers import random_image
from transformers import ConvNextConfig, ConvNextModel

from mm1.data.chat import IMAGE
from mm1.model import MM1ForConditionalGeneration, MM1Processor, build_mm1, mm1_config
from mm1.model.info import model_info
from mm1.model.vision import feature_geometry


def _image_ids(model, per_image: int) -> torch.Tensor:
    return torch.tensor([[1] + [model.config.image_token_id] * per_image + [20, 21]])


def test_tiny_cnn_gives_the_vit_grid_and_every_parameter_learns(tokenizer):
    model = build_mm1("tiny-cnn", tokenizer).train()
    geometry = feature_geometry(model.config.vision_config)
    assert (geometry.stride, geometry.channels, geometry.native_size) == (8, 128, None)
    pixels = torch.randn(3, 3, 64, 64)
    features = model.vision_tower(pixels)
    assert features.shape == (3, 64, 128) == (3, model.config.num_patches, model.config.vision_hidden_size)
    grid = model.vision_tower.model(pixel_values=pixels).last_hidden_state  # [3, 128, 8, 8]
    # Row-major: row 2, column 5. The tower runs channels-last; the plain layout gives the same numbers.
    assert features.is_contiguous()
    assert torch.allclose(features[:, 8 * 2 + 5], grid[:, :, 2, 5], atol=1e-5)
    assert torch.allclose(features, grid.flatten(2).transpose(1, 2), atol=1e-5)
    ids = _image_ids(model, 16).expand(3, -1)
    pixels = torch.randn(3, 3, 64, 64)
    model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_eval_mode_answers_do_not_depend_on_the_rest_of_the_batch(tokenizer, tmp_path):
    """Batch norm: after training the tower uses its running statistics, so an image's logits are the same
    alone and beside another image, and survive a save/load round trip."""
    torch.manual_seed(0)
    model = build_mm1("tiny-cnn", tokenizer).train()
    with torch.no_grad():  # move the running statistics away from their init
        model.vision_tower(torch.rand(8, 3, 64, 64) * 3)
    model.eval()
    processor = MM1Processor.from_config(model.config, tokenizer)
    turn = [{"role": "user", "content": f"{IMAGE}\nwhat shape?"}]
    alone = processor.encode_chat(turn, [random_image(0)])
    with torch.no_grad():
        expected = model(**alone).logits
        pair = model.get_image_features(processor.images_to_pixel_values([random_image(0), random_image(1)]))
        single = model.get_image_features(alone["pixel_values"])
    assert torch.allclose(pair[:1], single, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = MM1ForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**alone).logits, expected, atol=1e-4, rtol=1e-4)


def test_convnext_by_path_drops_its_pooled_norm(tokenizer, tmp_path):
    convnext = ConvNextModel(ConvNextConfig(patch_size=4, num_stages=2, hidden_sizes=[32, 64], depths=[1, 1]))
    convnext.save_pretrained(tmp_path)
    model = build_mm1("tiny", tokenizer, vision=str(tmp_path), image_size=64).train()
    assert model.config.num_patches == 64  # stride 4 * 2 = 8: an 8x8 grid at 64 px
    pixels = torch.randn(2, 3, 64, 64)
    assert model.vision_tower(pixels).shape == (2, 64, 64)
    ids = _image_ids(model, 16).expand(2, -1)
    model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
    names = [name for name, _ in model.vision_tower.named_parameters()]
    assert not any(name.startswith("model.layernorm.") for name in names)
    for name, param in model.vision_tower.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    expected = convnext.encoder.stages[1].layers[0].dwconv.weight
    assert torch.equal(model.vision_tower.model.encoder.stages[1].layers[0].dwconv.weight, expected)


def test_image_size_must_be_a_multiple_of_the_total_stride(tokenizer):
    with pytest.raises(ValueError, match=r"image_size=60 .*total stride\) 8"):
        mm1_config("tiny-cnn", tokenizer, image_size=60)
    with pytest.raises(ValueError, match="4x4 pool but the patch grid is only 2x2"):
        mm1_config("tiny-cnn", tokenizer, image_size=16)


def test_conv_tower_flops_are_counted_per_position():
    """A conv tower's FLOPs grow with the pixels it sees (weights reused at every position), unlike 6 x its
    parameter count per output cell."""
    base, double = (model_info(mm1_config("tiny-cnn", image_size=s), 256) for s in (64, 128))
    assert base["vision_params"] == double["vision_params"]
    assert 3.5 < double["flops_per_image"] / base["flops_per_image"] < 4.5
    assert base["flops_per_image"] > 6 * base["vision_params"] * 64
