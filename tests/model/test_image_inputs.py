"""Placeholders vs images, image splitting and resolution interpolation."""

from __future__ import annotations

import pytest
import torch
from model_helpers import make_model, random_image

from mm1.data.chat import IMAGE
from mm1.data.preprocess import crops_per_image, split_image
from mm1.model import MM1Config, MM1Processor


def test_placeholder_image_mismatch_names_both_counts(model, processor):
    enc = processor.encode_chat(
        [{"role": "user", "content": f"{IMAGE}{IMAGE} compare"}], [random_image(0)] * 2
    )
    one_image = enc["pixel_values"][:1]
    with pytest.raises(ValueError, match=r"32 image placeholders \(2 images.*but 1 images were given"):
        model(input_ids=enc["input_ids"], pixel_values=one_image)
    with pytest.raises(ValueError, match=r"32 image placeholders.*but 0 images"):
        model(input_ids=enc["input_ids"])
    text_only = processor.encode_chat([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match=r"0 image placeholders .* but 1 images"):
        model(input_ids=text_only["input_ids"], pixel_values=one_image)


def test_partial_image_run_is_rejected(model):
    per_image = model.config.image_tokens_per_image
    ids = torch.tensor([[1] + [model.config.image_token_id] * (per_image - 3) + [5, 6]])
    # 13 placeholders cannot be an image of 16 tokens; the count check names it.
    with pytest.raises(ValueError, match="13 image placeholders"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 3, 64, 64))
    # Two runs of 8 add up to one image's worth, but neither run is a whole image.
    half = [model.config.image_token_id] * (per_image // 2)
    ids = torch.tensor([[1, *half, 5, *half, 6]])
    with pytest.raises(ValueError, match=r"runs of lengths \[8, 8\]"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 3, 64, 64))


def test_images_change_the_prediction(model, processor):
    turns = [{"role": "user", "content": f"{IMAGE} what is this"}]
    with torch.no_grad():
        a = model(**processor.encode_chat(turns, [random_image(1)])).logits[0, -1]
        b = model(**processor.encode_chat(turns, [random_image(2)])).logits[0, -1]
    assert not torch.allclose(a, b)


def test_image_splitting_token_count(tokenizer):
    model = make_model(tokenizer, image_grid=2)
    processor = MM1Processor.from_config(model.config, tokenizer)
    assert model.config.sub_images_per_image == 5
    assert processor.image_tokens_per_image == model.config.image_tokens_per_image == 5 * 16
    image = random_image(3, size=150)
    pixels = processor.images_to_pixel_values([image, image])
    assert pixels.shape == (10, 3, 64, 64)
    # Sub-image order is split_image's: crops row-major, overview last.
    crops = split_image(image, 64, 2)
    expected_overview = (torch.from_numpy(crops[-1].copy()).float() / 255 - 0.48145466) / 0.26862954
    assert torch.allclose(pixels[4, 0], expected_overview[..., 0], atol=1e-5)
    enc = processor.encode_chat([{"role": "user", "content": f"{IMAGE}\n{IMAGE} two"}], [image, image])
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 2 * 80
    with torch.no_grad():
        out = model(**enc)
    assert out.logits.shape[1] == enc["input_ids"].shape[1]


def test_mm1_high_resolution_numbers():
    """1344 px -> 4 crops of 672 + overview, k=144 -> 720 image tokens per image."""
    config = MM1Config(image_size=672, image_grid=2, num_image_tokens=144)
    assert config.sub_images_per_image == 5 and config.image_tokens_per_image == 720
    assert config.vision_config.image_size == 378  # the encoder is trained at 378 and interpolated to 672
    assert len(split_image(random_image(0, size=1344), 672, 2)) == 5


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_one_crop_count_everywhere(grid):
    """split_image, the model's config and the processor agree with crops_per_image (the one home of it)."""
    assert len(split_image(random_image(0, size=48), 16, grid)) == crops_per_image(grid)
    config = MM1Config(image_size=28, image_grid=grid, num_image_tokens=4)
    assert config.sub_images_per_image == crops_per_image(grid)
    assert crops_per_image(grid) == (grid * grid + 1 if grid > 1 else 1)


def test_encoder_runs_at_higher_resolution_by_interpolation(tokenizer):
    """A ViT built for 32 px runs at 64 px: 4x the patches, and the same weights at native size agree."""
    model = make_model(tokenizer, overrides={"vision_config.image_size": 32})
    tower = model.vision_tower
    assert tower.native_size == 32 and tower.image_size == 64
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = tower(pixels)
        assert features.shape == (2, 64, 128)  # (64 / 8)^2 patches, CLS dropped
        native = tower.model(pixel_values=pixels[..., :32, :32]).last_hidden_state[:, 1:]
        same_size = tower.model(pixel_values=pixels[..., :32, :32], interpolate_pos_encoding=True)
    assert torch.allclose(native, same_size.last_hidden_state[:, 1:], atol=1e-5)
    with pytest.raises(ValueError, match="pixel_values are 32x32 but the model expects 64x64"):
        tower(pixels[..., :32, :32])
    enc_ids = torch.tensor([[1] + [model.config.image_token_id] * 16 + [7]])
    with torch.no_grad():
        assert model(input_ids=enc_ids, pixel_values=pixels[:1]).logits.isfinite().all()
