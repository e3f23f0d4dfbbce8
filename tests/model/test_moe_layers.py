"""MM1-MoE: top-2 experts copied from the dense FFN, router losses in the training loss."""

from __future__ import annotations

import torch
from model_helpers import make_model, random_image

from mm1.data.chat import IMAGE
from mm1.model import upcycle_to_moe
from mm1.model.moe import SparseMoE


def _batch(processor):
    enc = processor.encode_conversation(
        [
            {"role": "user", "content": f"{IMAGE}\nwhat shape?"},
            {"role": "assistant", "content": "a red square"},
        ]
    )
    return {
        "input_ids": torch.tensor([enc.input_ids]),
        "labels": torch.tensor([enc.labels]),
        "pixel_values": processor.images_to_pixel_values([random_image(0)]),
    }


def test_moe_layers_sit_every_mth_layer(tokenizer):
    model = make_model(tokenizer, overrides={"moe_num_experts": 8, "moe_every": 2})
    layers = model.language_model.model.layers
    assert [isinstance(layer.mlp, SparseMoE) for layer in layers] == [False, True, False, True]
    assert layers[1].mlp.experts.gate_proj.weight.shape[0] == 8 and layers[1].mlp.top_k == 2


def test_upcycled_experts_start_as_the_dense_ffn(tokenizer, processor):
    dense = make_model(tokenizer)
    batch = _batch(processor)
    with torch.no_grad():
        before = dense(**batch).logits
        upcycle_to_moe(dense, num_experts=4, every=1)
        after = dense(**batch)
    assert dense.config.moe_num_experts == 4
    # Identical experts + renormalised top-2 weights = the dense FFN, whatever the router picks.
    assert torch.allclose(before, after.logits, atol=1e-4)
    assert after.load_balancing_loss is not None


def test_router_losses_join_the_loss_and_the_router_learns(tokenizer, processor):
    model = make_model(tokenizer, overrides={"moe_num_experts": 4, "moe_every": 2}).train()
    out = model(**_batch(processor))
    config = model.config
    assert out.load_balancing_loss > 0 and out.router_z_loss > 0
    expected = (
        out.lm_loss
        + config.moe_aux_loss_coef * out.load_balancing_loss
        + config.moe_z_loss_coef * out.router_z_loss
    )
    assert torch.allclose(out.loss, expected)
    assert (config.moe_aux_loss_coef, config.moe_z_loss_coef) == (0.01, 0.001)

    router = model.language_model.model.layers[1].mlp.router.weight
    before = router.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out.loss.backward()
    assert router.grad is not None and router.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, router.detach())


def test_load_balancing_loss_is_one_when_uniform_and_grows_when_collapsed():
    moe = SparseMoE(torch.nn.Linear(8, 8), hidden_size=8, num_experts=4, top_k=2)
    torch.nn.init.zeros_(moe.router.weight)
    moe(torch.randn(16, 8))
    uniform = moe.load_balancing_loss
    with torch.no_grad():
        moe.router.weight[0] = 5.0
        moe.router.weight[1] = 4.0
    x = torch.rand(16, 8) + 0.1  # positive inputs: experts 0 and 1 win for every token
    moe(x)
    assert torch.allclose(uniform, torch.tensor(1.0)) and moe.load_balancing_loss > 1.5
