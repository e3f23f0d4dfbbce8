from __future__ import annotations

import pytest
import torch
from model_helpers import random_image

from mm1.data.chat import IMAGE
from mm1.model import apply_freeze
from mm1.model.freeze import part_modules


@pytest.mark.parametrize("frozen", [[], ["vision"], ["vision", "llm"], ["connector", "llm"]])
def test_gradients_reach_exactly_the_unfrozen_parts(model, processor, frozen):
    assert apply_freeze(model, frozen) == frozen
    model.train()
    enc = processor.encode_conversation(
        [
            {"role": "user", "content": f"{IMAGE}\nwhat shape?"},
            {"role": "assistant", "content": "a red square"},
        ]
    )
    out = model(
        input_ids=torch.tensor([enc.input_ids]),
        labels=torch.tensor([enc.labels]),
        pixel_values=processor.images_to_pixel_values([random_image(0)]),
    )
    out.loss.backward()
    for part, module in part_modules(model).items():
        for name, param in module.named_parameters():
            if part in frozen:
                assert not param.requires_grad and param.grad is None, (
                    f"{part}.{name} is frozen but got a gradient"
                )
            else:
                assert param.requires_grad, f"{part}.{name} is not trainable"
                assert param.grad is not None and param.grad.abs().sum() > 0, f"{part}.{name} got no gradient"
    trainable = {p for p, m in part_modules(model).items() if any(q.requires_grad for q in m.parameters())}
    assert trainable == {"vision", "connector", "llm"} - set(frozen)
    # Unused encoder modules (CLIP's post_layernorm) are gone, so nothing trainable is left without a gradient.
    assert not any("post_layernorm" in n for n, _ in model.vision_tower.named_parameters())


def test_unknown_part_lists_the_valid_ones(model):
    with pytest.raises(
        ValueError,
        match=r"unknown parts to freeze \['vit'\]; valid parts are \['vision', 'connector', 'llm'\]",
    ):
        apply_freeze(model, ["vit"])


def test_a_frozen_batch_norm_tower_keeps_its_running_statistics(tokenizer):
    """train_mode leaves frozen parts in eval mode: a frozen CNN tower's batch norm neither normalizes with
    the batch's statistics nor updates its running ones; an unfrozen one does both."""
    from mm1.model import build_mm1, train_mode

    model = build_mm1("tiny-cnn", tokenizer)
    norm = model.vision_tower.model.embedder.embedder.normalization
    pixels = torch.rand(4, 3, 64, 64) * 3
    apply_freeze(model, ["vision"])
    train_mode(model, ["vision"])
    assert model.training and model.connector.training and not model.vision_tower.training
    before = norm.running_mean.clone()
    model.vision_tower(pixels)
    assert torch.equal(norm.running_mean, before)
    apply_freeze(model, [])
    train_mode(model, [])
    model.vision_tower(pixels)
    assert not torch.equal(norm.running_mean, before)
