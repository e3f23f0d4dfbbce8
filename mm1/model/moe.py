"""Sparse mixture-of-experts FFN for the LLM (MM1-MoE: top-2 routing, experts initialised from the dense FFN).

`add_moe_layers` swaps the MLP of every m-th decoder layer of a HF causal LM for a `SparseMoE` whose experts
are copies of that MLP, so an MoE model starts out computing exactly what its dense parent computes. Each MoE
layer records its router losses on every forward; `collect_router_losses` averages them over the layers.

Losses (per MoE layer, over the T tokens of the batch, E experts, top-k routing):
  load balancing  E * sum_e f_e * p_e, f_e = share of the T*k routing slots sent to expert e,
                  p_e = mean router probability of e (Switch Transformer; 1.0 when perfectly balanced).
  router z-loss   mean_t logsumexp(router logits_t)^2 (ST-MoE; keeps logits small and routing stable).
The T tokens include padding (an MLP does not see the attention mask); packed rows have little of it.
Experts that receive no token in a step get no gradient: under DDP use find_unused_parameters=True.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class SparseMoE(nn.Module):
    def __init__(
        self, dense_mlp: nn.Module, hidden_size: int, num_experts: int, top_k: int = 2, init_std: float = 0.02
    ):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        nn.init.normal_(self.router.weight, std=init_std)
        self.experts = nn.ModuleList(copy.deepcopy(dense_mlp) for _ in range(num_experts))
        self.load_balancing_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = hidden_states.reshape(-1, hidden_states.shape[-1])
        logits = self.router(tokens).float()  # routing decisions in fp32
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


def decoder_layers(language_model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a HF causal LM (Llama/Mistral/Qwen-style `.layers` or GPT-style `.h`)."""
    decoder = language_model.get_decoder() if hasattr(language_model, "get_decoder") else language_model
    for attr in ("layers", "h"):
        layers = getattr(decoder, attr, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(language_model).__name__} (no .layers or .h)")


def moe_layer_indices(num_layers: int, every: int) -> list[int]:
    """Every m-th layer, 1-based: m=2 -> 1, 3, 5, ...; m=1 -> all."""
    return [i for i in range(num_layers) if (i + 1) % every == 0]


def add_moe_layers(
    language_model: nn.Module, num_experts: int, every: int, top_k: int, init_std: float = 0.02
) -> list[int]:
    """Replace the MLP of every `every`-th decoder layer by a SparseMoE copied from it; returns the indices."""
    layers = decoder_layers(language_model)
    hidden = language_model.config.hidden_size
    indices = moe_layer_indices(len(layers), every)
    for i in indices:
        if not hasattr(layers[i], "mlp"):
            raise ValueError(
                f"decoder layer {i} of {type(language_model).__name__} has no .mlp to make sparse"
            )
        layers[i].mlp = SparseMoE(layers[i].mlp, hidden, num_experts, top_k, init_std)
    return indices


def collect_router_losses(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Mean load-balancing and z-loss over the MoE layers that ran in the last forward (then cleared)."""
    balance, z = [], []
    for module in model.modules():
        if isinstance(module, SparseMoE) and module.load_balancing_loss is not None:
            balance.append(module.load_balancing_loss)
            z.append(module.z_loss)
            module.load_balancing_loss = module.z_loss = None
    if not balance:
        return None
    return torch.stack(balance).mean(), torch.stack(z).mean()
