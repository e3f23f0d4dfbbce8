"""MoE experts as grouped matmuls: the same outputs, router losses and gradients as running each expert on its
own tokens (the per-expert loop they replace), no Python loop over experts, and per-expert checkpoints load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from model_helpers import make_model, random_image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from mm1.data.chat import IMAGE
from mm1.model import MM1ForConditionalGeneration, MM1Processor
from mm1.model.moe import GATED_PROJECTIONS, SparseMoE

HIDDEN, FFN, EXPERTS = 32, 64, 6


def _moe(backend: str, num_experts: int = EXPERTS, seed: int = 0) -> SparseMoE:
    torch.manual_seed(seed)
    moe = SparseMoE(LlamaMLP(LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN)), HIDDEN, num_experts)
    with torch.no_grad():  # experts that differ, and a router that sends tokens unevenly
        for name in GATED_PROJECTIONS:
            getattr(moe.experts, name).weight.normal_(std=0.2)
        moe.router.weight.normal_(std=0.5)
        moe.router.weight[0] = -1.0  # with positive inputs, expert 0 gets no token: an empty group
    moe.backend = backend
    return moe


class LoopMoE(nn.Module):
    """The reference: E separate FFNs (as SparseMoE held them before), each run on the tokens routed to it."""

    def __init__(self, grouped: SparseMoE):
        super().__init__()
        self.top_k = grouped.top_k
        self.router = copy.deepcopy(grouped.router)
        config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN)
        self.experts = nn.ModuleList(LlamaMLP(config) for _ in range(grouped.num_experts))
        with torch.no_grad():
            for i, expert in enumerate(self.experts):
                for name in GATED_PROJECTIONS:
                    getattr(expert, name).weight.copy_(getattr(grouped.experts, name).weight[i])

    def forward(self, hidden_states):
        tokens = hidden_states.reshape(-1, hidden_states.shape[-1])
        logits = self.router(tokens).float()
        probs = logits.softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(tokens.dtype)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            token_idx, slot = (chosen == index).nonzero(as_tuple=True)
            if token_idx.numel():
                out.index_add_(0, token_idx, expert(tokens[token_idx]) * weights[token_idx, slot, None])
        num_experts = probs.shape[-1]
        routed_share = F.one_hot(chosen, num_experts).sum(dim=1).float().mean(dim=0) / self.top_k
        self.load_balancing_loss = num_experts * (routed_share * probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return out.reshape(hidden_states.shape)


@pytest.mark.parametrize("backend", ["grouped_mm", "bmm"])
def test_grouped_experts_match_the_per_expert_loop(backend):
    moe = _moe(backend)
    reference = LoopMoE(moe)
    x = torch.rand(3, 20, HIDDEN) + 0.1
    x_ref = x.clone().requires_grad_()
    x.requires_grad_()
    out, expected = moe(x), reference(x_ref)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe.load_balancing_loss, reference.load_balancing_loss)
    torch.testing.assert_close(moe.z_loss, reference.z_loss)

    probe = torch.randn_like(out)
    ((out * probe).sum() + moe.load_balancing_loss + moe.z_loss).backward()
    ((expected * probe).sum() + reference.load_balancing_loss + reference.z_loss).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe.router.weight.grad, reference.router.weight.grad, atol=1e-5, rtol=1e-5)
    for name in GATED_PROJECTIONS:
        per_expert = [
            torch.zeros_like(getattr(e, name).weight)
            if getattr(e, name).weight.grad is None
            else getattr(e, name).weight.grad
            for e in reference.experts
        ]
        torch.testing.assert_close(
            getattr(moe.experts, name).weight.grad, torch.stack(per_expert), atol=1e-5, rtol=1e-5
        )
    assert moe.experts.gate_proj.weight.grad[0].abs().sum() == 0  # the idle expert


@pytest.mark.parametrize("backend, op", [("grouped_mm", "_grouped_mm"), ("bmm", "bmm")])
def test_one_matmul_per_projection_whatever_the_number_of_experts(monkeypatch, backend, op):
    calls = []
    real = getattr(torch, op)

    def counting(*args, **kwargs):
        calls.append(op)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, op, counting)
    for experts in (4, 32):
        calls.clear()
        _moe(backend, num_experts=experts)(torch.randn(2, 16, HIDDEN))
        assert len(calls) == len(GATED_PROJECTIONS), (experts, calls)


def test_per_expert_state_dict_loads_into_stacked_experts():
    moe = _moe("auto")
    legacy = LoopMoE(moe).state_dict()  # experts.<i>.gate_proj.weight, ... as SparseMoE saved them before
    assert "experts.3.up_proj.weight" in legacy
    fresh = _moe("auto", seed=1)
    fresh.load_state_dict(legacy, strict=True)
    for name in GATED_PROJECTIONS:
        assert torch.equal(getattr(fresh.experts, name).weight, getattr(moe.experts, name).weight)


def test_checkpoints_keep_per_expert_keys_and_old_ones_load(tokenizer, tmp_path):
    model = make_model(tokenizer, overrides={"moe_num_experts": 4, "moe_every": 2})
    with torch.no_grad():  # experts that differ from one another
        for name, param in model.named_parameters():
            if ".experts." in name:
                param.add_(0.05 * torch.randn_like(param))
    processor = MM1Processor.from_config(model.config, tokenizer)
    inputs = processor.encode_chat([{"role": "user", "content": f"{IMAGE}\nwhat shape?"}], [random_image(0)])

    # A folder as the per-expert implementation wrote it: every expert's FFN under its own index.
    old = tmp_path / "old"
    old.mkdir()
    legacy = {}
    for key, value in model.state_dict().items():
        head, sep, tail = key.partition(".mlp.experts.")
        if not sep:
            legacy[key] = value.clone()
            continue
        for i in range(value.shape[0]):
            legacy[f"{head}.mlp.experts.{i}.{tail}"] = value[i].clone()
    save_file(legacy, str(old / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(old)
    assert "model_type" in json.loads((old / "config.json").read_text())

    loaded = MM1ForConditionalGeneration.from_pretrained(old).eval()
    model.save_pretrained(tmp_path / "new")
    with safe_open(str(tmp_path / "new" / "model.safetensors"), "pt") as f:
        saved = {k for k in f.keys() if ".experts." in k}
    assert saved == {k for k in legacy if ".experts." in k}  # the same per-expert layout on disk
    reloaded = MM1ForConditionalGeneration.from_pretrained(tmp_path / "new").eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        for other in (loaded, reloaded):
            torch.testing.assert_close(other(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
