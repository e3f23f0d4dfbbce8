"""Per-stage image settings (issue 20.2): aspect-aware crop layouts, one choice in train, eval and serving,
and a model switched to another resolution and split between stages."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from model_helpers import make_model
from PIL import Image

from mm1.config import loads
from mm1.data import chat
from mm1.data.loader import PackedCollate, pack_table
from mm1.data.packing import PackSpec
from mm1.data.preprocess import choose_layout, grid_layouts, parse_layout, split_image
from mm1.model import MM1ForConditionalGeneration, MM1Processor
from mm1.stage_images import stage_images


def _png(width: int, height: int, seed: int = 0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_automatic_layouts_keep_the_crop_count_and_bound_the_aspect():
    assert grid_layouts(1) == ((1, 1),)
    assert grid_layouts(2) == ((1, 4), (2, 2), (4, 1))
    assert grid_layouts(3) == ((3, 3),)  # 1x9 is wider than 4:1
    assert grid_layouts(2, ["2x2"]) == ((2, 2),)
    assert set(grid_layouts(2, ["1x4"])) == {(1, 4), (2, 2)}  # the square is always there
    with pytest.raises(ValueError, match=r"\['1x2'\] do not have 4 crops"):
        grid_layouts(2, ["1x2"])
    with pytest.raises(ValueError, match="not a grid layout"):
        parse_layout("2by2")


@pytest.mark.parametrize(
    ("width", "height", "layout"),
    [(100, 100, (2, 2)), (400, 100, (1, 4)), (100, 400, (4, 1)), (300, 100, (1, 4)), (150, 100, (2, 2))],
)
def test_the_layout_fits_the_images_shape(width, height, layout):
    assert choose_layout(width, height, grid_layouts(2)) == layout


def test_a_wide_image_is_tiled_in_a_strip_not_squeezed_into_a_square():
    wide = np.zeros((40, 160, 3), dtype=np.uint8)
    wide[:, 40:80] = 255  # the second quarter white
    crops = split_image(wide, 16, 2, grid_layouts(2))
    assert len(crops) == 5 and all(c.shape == (16, 16, 3) for c in crops)
    # 1x4: crop 1 is the white quarter; a 2x2 grid would put white in half of crops 0 and 2 instead
    assert crops[1].min() > 200 and crops[0].max() < 50 and crops[2].max() < 50
    square = split_image(wide, 16, 2)  # no layouts given: the square grid, as before
    assert square[0][:, 8:].min() > 200


def test_train_eval_and_serving_split_a_wide_image_the_same_way(tokenizer, tmp_path):
    from services.images import ImagePolicy
    from services.prompts import Limits, build_prompt
    from services.protocol import ChatCompletionRequest

    model = make_model(tokenizer, image_grid=2, image_size=32, num_image_tokens=4)
    model.set_image_settings(32, 2, [list(layout) for layout in grid_layouts(2)])
    processor = MM1Processor.from_config(model.config, tokenizer)
    assert processor.image_layouts == grid_layouts(2)
    png = _png(200, 50)

    encoded = chat.encode_conversation(
        tokenizer,
        [{"role": "user", "content": f"{chat.IMAGE}\nwhat?"}, {"role": "assistant", "content": "x"}],
        1,
    )
    table = pa.table(
        {
            "input_ids": pa.array([encoded.input_ids], pa.list_(pa.int32())),
            "labels": pa.array([encoded.labels], pa.list_(pa.int32())),
            "images": pa.array([[png]], pa.list_(pa.binary())),
        }
    )
    spec = PackSpec(
        128, 2, processor.image_tokens_per_image, model.config.image_token_id, tokenizer.pad_token_id
    )
    rows = pack_table(table, spec, 32, 2, processor.image_layouts)
    train = PackedCollate.for_processor(processor)(rows)["pixel_values"]
    evaluation = processor.images_to_pixel_values([png])
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}]
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": content}])
    policy = ImagePolicy(10**6, 10**6, str(tmp_path), (), 1.0)
    served = asyncio.run(build_prompt(request, processor, policy, Limits(2, 512, 8))).pixel_values

    assert train.shape == (5, 3, 32, 32)
    assert torch.equal(train, evaluation) and torch.equal(train, served)
    square = processor.images_to_pixel_values([_png(50, 50)])
    assert not torch.equal(split_pixels(png, 32, ((2, 2),)), train[:4])  # the strip, not the square grid
    assert square.shape == train.shape


def split_pixels(png: bytes, size: int, layouts) -> torch.Tensor:
    from mm1.data.preprocess import CLIP_MEAN, CLIP_STD, to_pixel_values

    return to_pixel_values(split_image(png, size, 2, layouts)[:4], CLIP_MEAN, CLIP_STD)


def test_a_model_switched_to_a_higher_resolution_and_a_split_saves_and_reloads_them(tokenizer, tmp_path):
    model = make_model(tokenizer, image_size=32, num_image_tokens=4)  # pre-training: 32 px, no split
    assert model.vision_tower.native_size == 64  # the tiny preset's tower is built for 64 px
    layouts = [[1, 4], [2, 2], [4, 1]]
    model.set_image_settings(64, 2, layouts)  # SFT: the native 64 px, 4 crops + overview
    assert model.vision_tower.image_size == 64 and model.vision_tower.num_patches == (64 // 8) ** 2
    processor = MM1Processor.from_config(model.config, tokenizer)
    assert processor.image_size == 64 and processor.image_tokens_per_image == 5 * 4
    turns = [{"role": "user", "content": f"{chat.IMAGE}\nwhat?"}]
    inputs = processor.encode_chat(turns, [_png(120, 40)])
    with torch.no_grad():
        logits = model(**inputs).logits

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = MM1ForConditionalGeneration.from_pretrained(tmp_path).eval()
    reloaded = MM1Processor.from_pretrained(tmp_path)
    assert (again.config.image_size, again.config.image_grid) == (64, 2)
    assert reloaded.image_layouts == ((1, 4), (2, 2), (4, 1))
    again_inputs = reloaded.encode_chat(turns, [_png(120, 40)])
    assert torch.equal(again_inputs["pixel_values"], inputs["pixel_values"])
    with torch.no_grad():
        assert torch.allclose(again(**again_inputs).logits, logits, atol=1e-5)


def test_a_switch_the_tower_or_connector_cannot_take_is_refused_and_changes_nothing(tokenizer):
    model = make_model(tokenizer, image_size=32, num_image_tokens=16)
    with pytest.raises(ValueError, match="not a multiple of the vision patch size"):
        model.set_image_settings(36, 1)
    with pytest.raises(ValueError, match=r"needs a 4x4 pool but the patch grid is only 3x3"):
        model.set_image_settings(24, 1)
    with pytest.raises(ValueError, match="do not have 4 crops"):
        model.set_image_settings(32, 2, [[1, 2]])
    assert (model.config.image_size, model.config.image_grid, model.vision_tower.image_size) == (32, 1, 32)


def test_each_stage_resolves_its_own_settings_and_inherits_the_rest():
    wf = loads(
        """
name: s
packing: {seq_len: 256, max_images: 4}
model: {preset: tiny, connector: {num_tokens: 16}}
pretrain: {image_size: 32}
sft: {image_size: 96, image_grid: 2, seq_len: 512}
"""
    )
    pre, sft = stage_images(wf, "pretrain"), stage_images(wf, "sft")
    assert (pre.size, pre.grid, pre.seq_len, pre.tokens_per_image) == (32, 1, 256, 16)
    assert (sft.size, sft.grid, sft.seq_len, sft.tokens_per_image) == (96, 2, 512, 80)
    assert sft.layouts == ((1, 4), (2, 2), (4, 1))
    assert sft.model_settings() == {
        "image_size": 96,
        "image_grid": 2,
        "image_layouts": [[1, 4], [2, 2], [4, 1]],
    }
    plain = loads("name: p\nmodel: {preset: tiny}\n")
    assert stage_images(plain, "sft").size == 64  # no size anywhere: the preset tower's own
