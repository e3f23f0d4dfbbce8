"""The tiny model learns, and gradient checkpointing changes memory, not gradients."""

from __future__ import annotations

import torch
from model_helpers import make_model, random_image

from mm1.data.chat import IMAGE


def _batch(processor):
    enc = processor.encode_conversation(
        [
            {"role": "user", "content": f"{IMAGE}\nwhat shape?"},
            {"role": "assistant", "content": "a red square above a circle"},
        ]
    )
    return {
        "input_ids": torch.tensor([enc.input_ids]),
        "labels": torch.tensor([enc.labels]),
        "pixel_values": processor.images_to_pixel_values([random_image(0)]),
    }


def test_tiny_model_fits_one_batch(tokenizer, processor):
    torch.manual_seed(0)
    model = make_model(
        tokenizer, overrides={"text_config.initializer_range": 0.02, "initializer_range": 0.02}
    ).train()
    batch = _batch(processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, processor):
    batch = _batch(processor)
    grads = []
    for checkpointing in (False, True):
        model = make_model(tokenizer).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**batch, use_cache=False).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-5), name
