"""Sparse mixture-of-experts FFN for the LLM (MM1-MoE: top-2 routing, experts initialised from the dense FFN).

`add_moe_layers` swaps the MLP of every m-th decoder layer of a HF causal LM for a `SparseMoE` whose experts
are copies of that MLP, so an MoE model starts out computing exactly what its dense parent computes. Each MoE
layer records its router losses on every forward; `collect_router_losses` averages them over the layers.

Losses (per MoE layer, over the T tokens of the batch, E experts, top-k routing):
  load balancing  E * sum_e f_e * p_e, f_e = share of the T*k routing slots sent to expert e,
                  p_e = mean router probability of e (Switch Transformer; 1.0 when perfectly balanced).
  router z-loss   mean_t logsumexp(router logits_t)^2 (ST-MoE; keeps logits small and routing stable).
The T tokens include padding (an MLP does not see the attention mask); packed rows have little of it.

Experts run as grouped matmuls, never one by one (as torchtitan's GroupedExperts): `GroupedExperts` holds
the E experts' weights stacked, `[E, out, in]` per projection of the FFN (`experts.gate_proj.weight`, ...).
The T*k routing slots are sorted by expert (a stable argsort) and copied into one buffer where each expert's
rows are contiguous, and every projection of all experts is one `torch._grouped_mm` over that buffer, with
the groups' end offsets on the device (no host sync). Groups are padded with zero rows to a multiple of
`GROUP_ALIGN` rows and to at least that many (what CUDA's grouped GEMM wants; torchtitan does the same), so
the buffer has a static size, T*k + E*GROUP_ALIGN rows. On CPUs, and where `_grouped_mm` cannot run (a
CUDA card before sm80, fp32 on CUDA, rows that are not 16-byte aligned, an older torch), the same buffer is
laid out with every expert padded to the busiest one's count (one host sync) and each projection is one
batched `torch.bmm` over [E, capacity, in] (`SparseMoE.backend` picks). Either way an expert's output is scaled by its renormalised router
weight and a token's k outputs are summed, as the per-expert loop this replaces did.
Every expert's weights take part in every step (an idle one gets a zero gradient), so DDP needs no search
for unused parameters on their account.

Checkpoints keep the per-expert layout of Hugging Face MoE checkpoints (`mlp.experts.3.gate_proj.weight`,
also what this module saved before the experts were stacked): transformers' conversion mapping, registered
for MM1ForConditionalGeneration below, stacks them on `from_pretrained` and splits them on `save_pretrained`;
a plain `load_state_dict` of per-expert keys is stacked by `GroupedExperts._load_from_state_dict`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Rows per expert group are padded to a multiple of this (and to at least this) for the grouped GEMM.
GROUP_ALIGN = 8
# The projections of a gated FFN (Llama, Mistral, Qwen, Gemma, ...): down(act(gate(x)) * up(x)).
GATED_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class StackedLinear(nn.Module):
    """E copies of one nn.Linear: weight [E, out, in], bias [E, out] (or None)."""

    def __init__(self, linear: nn.Linear, num_experts: int):
        super().__init__()
        weight = linear.weight.detach()
        self.weight = nn.Parameter(weight.unsqueeze(0).repeat(num_experts, 1, 1))
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().unsqueeze(0).repeat(num_experts, 1))

    def forward(self, rows: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
        return layout.linear(rows, self.weight, self.bias)


class ExpertLayout:
    """Where each routing slot sits in the expert-grouped buffer, and how one projection runs over it."""

    def __init__(self, chosen: torch.Tensor, num_experts: int, grouped_mm: bool):
        flat = chosen.reshape(-1)  # [T*k] expert of each routing slot, slot = token * k + j
        slots = flat.numel()
        order = flat.argsort(stable=True)  # slots sorted by expert
        expert_sorted = flat[order]
        counts = torch.bincount(flat, minlength=num_experts)
        if grouped_mm:
            padded = ((counts + GROUP_ALIGN - 1) // GROUP_ALIGN * GROUP_ALIGN).clamp_min(GROUP_ALIGN)
            self.rows = slots + num_experts * GROUP_ALIGN  # static: >= sum(padded)
            self.capacity = None
        else:
            self.capacity = int(counts.max()) if slots else 0  # host sync (the fallback only)
            padded = torch.full_like(counts, self.capacity)
            self.rows = num_experts * self.capacity
        ends = padded.cumsum(0)
        rank = torch.arange(slots, device=flat.device) - (counts.cumsum(0) - counts)[expert_sorted]
        # Buffer row of every slot, in slot order.
        self.dest = torch.empty_like(order).scatter_(0, order, (ends - padded)[expert_sorted] + rank)
        self.offsets = ends.to(torch.int32)
        self.num_experts = num_experts
        self._row_expert: torch.Tensor | None = None

    def row_expert(self) -> torch.Tensor:
        """The expert of each buffer row (for biases); rows past the last group are given the last expert."""
        if self._row_expert is None:
            rows = torch.arange(self.rows, device=self.offsets.device, dtype=torch.int32)
            experts = torch.bucketize(rows, self.offsets, right=True)
            self._row_expert = experts.clamp_max(self.num_experts - 1)
        return self._row_expert

    def scatter(self, tokens: torch.Tensor, top_k: int) -> torch.Tensor:
        """[T, d] tokens -> [rows, d] buffer: each token copied to its k slots' rows, zeros elsewhere."""
        buffer = tokens.new_zeros(self.rows, tokens.shape[-1])
        return buffer.index_copy(0, self.dest, tokens.repeat_interleave(top_k, dim=0))

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """[rows, d] -> [T*k, d] in slot order."""
        return rows.index_select(0, self.dest)

    def linear(self, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """rows @ weight[e].T (+ bias[e]) for the rows of every expert e, as one grouped or batched matmul."""
        dtype = _compute_dtype(rows)
        rows, weight = rows.to(dtype), weight.to(dtype)
        if self.capacity is None:
            out = torch._grouped_mm(rows, weight.transpose(-2, -1), offs=self.offsets)
            if bias is not None:
                out = out + bias.to(dtype).index_select(0, self.row_expert())
        else:
            batched = rows.view(self.num_experts, self.capacity, rows.shape[-1])
            out = torch.bmm(batched, weight.transpose(-2, -1))
            if bias is not None:
                out = out + bias.to(dtype).unsqueeze(1)
            out = out.reshape(self.rows, -1)
        return out


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What F.linear would compute in: autocast's dtype when it is on for x's device, else x's."""
    kind = x.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def grouped_mm_supported(x: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """Whether torch._grouped_mm runs here: torch has it (CPU, or a CUDA card of sm80+ in bf16) and every
    row of the operands is 16-byte aligned (its kernels' requirement)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    dtype = _compute_dtype(x)
    if x.device.type == "cuda":
        if dtype != torch.bfloat16 or torch.cuda.get_device_capability(x.device) < (8, 0):
            return False
    elif x.device.type != "cpu":
        return False
    size = torch.empty((), dtype=dtype).element_size()
    return all(d * size % 16 == 0 for d in dims)


class GroupedExperts(nn.Module):
    """The E experts of an MoE layer as stacked weights: E copies of a gated FFN (gate_proj, up_proj,
    down_proj and act_fn, as Llama-family LLMs have) or of a single nn.Linear. Runs rows already grouped by
    expert (an ExpertLayout's buffer) through all experts at once."""

    def __init__(self, dense_mlp: nn.Module, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        if isinstance(dense_mlp, nn.Linear):
            self.kind, names = "linear", ("proj",)
            self.proj = StackedLinear(dense_mlp, num_experts)
        elif all(isinstance(getattr(dense_mlp, n, None), nn.Linear) for n in GATED_PROJECTIONS) and hasattr(
            dense_mlp, "act_fn"
        ):
            self.kind, names = "gated", GATED_PROJECTIONS
            for name in names:
                setattr(self, name, StackedLinear(getattr(dense_mlp, name), num_experts))
            self.act_fn = dense_mlp.act_fn
        else:
            raise ValueError(
                f"cannot make experts of {type(dense_mlp).__name__}: an MoE layer needs a gated FFN "
                f"({', '.join(GATED_PROJECTIONS)} as nn.Linear, and act_fn) or a single nn.Linear"
            )
        extra = {
            n
            for n, _ in dense_mlp.named_parameters()
            if self.kind == "gated" and n.split(".")[0] not in names
        }
        if extra:
            raise ValueError(
                f"{type(dense_mlp).__name__} has weights outside its projections: {sorted(extra)}"
            )
        self.projections = names
        # Per-expert keys of the same weights (earlier checkpoints): <i>.gate_proj.weight, or <i>.weight.
        self._legacy = {
            f"{name}.{p}": (p if self.kind == "linear" else f"{name}.{p}")
            for name in names
            for p in ("weight", "bias")
            if getattr(getattr(self, name), p) is not None
        }

    def expert_params(self) -> int:
        """Parameters of one expert."""
        return sum(p.numel() for p in self.parameters()) // self.num_experts

    def forward(self, rows: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
        if self.kind == "linear":
            return self.proj(rows, layout)
        hidden = self.act_fn(self.gate_proj(rows, layout)) * self.up_proj(rows, layout)
        return self.down_proj(hidden, layout)

    def dims(self) -> tuple[int, ...]:
        return tuple({d for name in self.projections for d in getattr(self, name).weight.shape[1:]})

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Stack per-expert keys (`<prefix><i>.gate_proj.weight`, as saved before experts were stacked)."""
        for new, old in self._legacy.items():
            keys = [f"{prefix}{i}.{old}" for i in range(self.num_experts)]
            if f"{prefix}{new}" not in state_dict and all(k in state_dict for k in keys):
                state_dict[f"{prefix}{new}"] = torch.stack([state_dict.pop(k) for k in keys])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SparseMoE(nn.Module):
    # "auto": torch._grouped_mm on a CUDA card where it runs, else padded batched matmuls (CPUs: measured
    # faster than torch's CPU _grouped_mm); "grouped_mm" or "bmm" force one (tests run both). In bf16 the
    # grouped path traces with torch.compile(fullgraph=True); in fp32 it runs eagerly only (the op's meta
    # kernel wants bf16), and the bmm path breaks the graph at its capacity (a host sync).
    backend = "auto"

    def __init__(
        self, dense_mlp: nn.Module, hidden_size: int, num_experts: int, top_k: int = 2, init_std: float = 0.02
    ):
        super().__init__()
        self.top_k = top_k
        self.num_experts = num_experts
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        nn.init.normal_(self.router.weight, std=init_std)
        self.experts = GroupedExperts(dense_mlp, num_experts)
        self.load_balancing_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None

    def _use_grouped_mm(self, tokens: torch.Tensor) -> bool:
        if self.backend == "auto":  # on CPUs the padded bmm measured 2-3x faster than _grouped_mm
            return tokens.device.type == "cuda" and grouped_mm_supported(tokens, self.experts.dims())
        if self.backend not in ("grouped_mm", "bmm"):
            raise ValueError(f"SparseMoE.backend must be auto, grouped_mm or bmm, got {self.backend!r}")
        return self.backend == "grouped_mm"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = hidden_states.reshape(-1, hidden_states.shape[-1])
        logits = self.router(tokens).float()  # routing decisions in fp32
        probs = logits.softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(tokens.dtype)

        layout = ExpertLayout(chosen, self.num_experts, self._use_grouped_mm(tokens))
        routed = layout.gather(self.experts(layout.scatter(tokens, self.top_k), layout))  # [T*k, d]
        routed = routed.to(tokens.dtype).view(tokens.shape[0], self.top_k, -1)
        out = (routed * weights.unsqueeze(-1)).sum(dim=1)

        num_experts = probs.shape[-1]
        routed_share = F.one_hot(chosen, num_experts).sum(dim=1).float().mean(dim=0) / self.top_k
        self.load_balancing_loss = num_experts * (routed_share * probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return out.reshape(hidden_states.shape)


def _register_checkpoint_layout() -> None:
    """Per-expert keys on disk <-> stacked parameters in memory, for from_pretrained and save_pretrained
    (transformers' own mechanism for its MoE models, e.g. Mixtral). Without it (an older transformers),
    checkpoints are written stacked and per-expert ones load through `load_state_dict` only."""
    try:
        from transformers.conversion_mapping import register_checkpoint_conversion_mapping
        from transformers.core_model_loading import MergeModulelist, WeightConverter
    except ImportError:
        return
    converters = [
        WeightConverter(
            source_patterns=f".mlp.experts.*.{name}.{p}",
            target_patterns=f".mlp.experts.{name}.{p}",
            operations=[MergeModulelist(dim=0)],
        )
        for name in GATED_PROJECTIONS
        for p in ("weight", "bias")
    ]
    register_checkpoint_conversion_mapping("MM1ForConditionalGeneration", converters, overwrite=True)


_register_checkpoint_layout()


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
