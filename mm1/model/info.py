"""Parameter counts and training FLOPs of a preset, computed on the meta device (no memory, no weights).

Definitions:
  embedding params  the LLM's input token embeddings + its output projection (lm_head, unless tied).
  N                 non-embedding params = total - embedding params (the N of MM1's learning-rate law).
  active params     per token: an MoE layer only runs top_k of its experts.
  FLOPs per token   training (forward + backward) FLOPs of the LLM per sequence position (PaLM, appendix B):
                      6 * (N_llm_active + d_model * vocab) + 12 * n_layers * n_heads * head_dim * seq_len
                    N_llm_active counts the active non-embedding LLM weights; d_model * vocab is the output
                    projection (a matmul, unlike the input lookup); the last term is attention's QK^T and AV
                    over a seq_len context, not halved for causality (as in PaLM).
  trainable         per part, for a stage's freeze and LoRA sections (`trainable_info`): a part's own
                    weights that train, and the LoRA adapters apart.
  FLOPs per image   training FLOPs of the encoder and connector per image (all sub-images):
                      sub_images * [P * 6 * (N_vision + N_connector) + 12 * L_v * d_v * P^2], P = patches;
                    the connector term is an upper bound (its second stage runs on k < P positions). A
                    convolutional tower reuses its weights at every position of every stage, so its term is
                    3x its forward FLOPs, counted by torch's FlopCounterMode on the meta device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mm1.model.configuration import MM1Config
from mm1.model.modeling import MM1ForConditionalGeneration
from mm1.model.moe import SparseMoE
from mm1.model.presets import mm1_config
from mm1.model.vision import VisionTower, feature_geometry
from mm1.registry import PRESETS

if TYPE_CHECKING:
    from mm1.config_sections import LoraConfig


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_model(config: MM1Config) -> MM1ForConditionalGeneration:
    with torch.device("meta"):
        return MM1ForConditionalGeneration(config)


def _forward_flops(tower: VisionTower, image_size: int) -> int:
    """FLOPs of one image's forward pass through a (meta-device) tower."""
    with FlopCounterMode(display=False) as counter:
        tower(torch.empty(1, 3, image_size, image_size, device="meta"))
    return counter.get_total_flops()


def model_info(preset: str | MM1Config, seq_len: int = 4096) -> dict[str, Any]:
    """Counts for a preset name (or any MM1Config); `seq_len` sets the attention term of FLOPs per token."""
    config = mm1_config(preset) if isinstance(preset, str) else preset
    model = _meta_model(config)
    llm, text, vision = model.language_model, config.text_config, config.vision_config

    embed = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings().weight
    embedding = embed.numel() + (0 if head is embed else head.numel())
    total = _count(model)
    vision_params, connector_params = _count(model.vision_tower), _count(model.connector)
    llm_non_embedding = _count(llm) - embedding
    inactive = sum(
        (m.num_experts - m.top_k) * m.experts.expert_params()
        for m in llm.modules()
        if isinstance(m, SparseMoE)
    )
    llm_active = llm_non_embedding - inactive

    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    attention = 12 * text.num_hidden_layers * text.num_attention_heads * head_dim * seq_len
    flops_per_token = 6 * (llm_active + text.hidden_size * text.vocab_size) + attention
    patches = config.num_patches
    if feature_geometry(vision).native_size is None:  # convolutional
        encoder = 3 * _forward_flops(model.vision_tower, config.image_size)
    else:
        encoder = (
            patches * 6 * vision_params + 12 * vision.num_hidden_layers * vision.hidden_size * patches**2
        )
    per_sub_image = encoder + patches * 6 * connector_params
    return {
        "preset": preset if isinstance(preset, str) else "custom",
        "total_params": total,
        "vision_params": vision_params,
        "connector_params": connector_params,
        "llm_params": llm_non_embedding,
        "embedding_params": embedding,
        "non_embedding_params": total - embedding,
        "active_params": total - inactive,
        "moe_layers": sum(isinstance(m, SparseMoE) for m in llm.modules()),
        "experts": config.moe_num_experts,
        "image_size": config.image_size,
        "image_grid": config.image_grid,
        "image_tokens_per_image": config.image_tokens_per_image,
        "seq_len": seq_len,
        "flops_per_token": flops_per_token,
        "flops_per_image": config.sub_images_per_image * per_sub_image,
    }


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


_COLUMNS = (
    ("preset", "preset", str),
    ("total", "total_params", _human),
    ("vision", "vision_params", _human),
    ("connector", "connector_params", _human),
    ("llm", "llm_params", _human),
    ("embeddings", "embedding_params", _human),
    ("N (non-emb)", "non_embedding_params", _human),
    ("active", "active_params", _human),
    ("experts", "experts", str),
    ("img tokens", "image_tokens_per_image", str),
    ("FLOPs/token", "flops_per_token", lambda v: f"{v:.3g}"),
    ("FLOPs/image", "flops_per_image", lambda v: f"{v:.3g}"),
)


def format_model_info(preset: str | Sequence[str] | None = None, seq_len: int = 4096) -> str:
    """A text table of model_info for one preset, several, or (None) all of them."""
    names = list(PRESETS) if preset is None else [preset] if isinstance(preset, str) else list(preset)
    infos = [model_info(name, seq_len) for name in names]
    rows = [[fmt(info[key]) for _, key, fmt in _COLUMNS] for info in infos]
    header = [title for title, _, _ in _COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    note = f"N excludes token embeddings and lm_head; FLOPs are training FLOPs (seq_len={seq_len}), see mm1.model.info"
    return "\n".join([*lines, note])


def trainable_info(
    preset: str | MM1Config, freeze: Sequence[str] = (), lora: LoraConfig | None = None
) -> dict[str, int]:
    """Trainable parameters per part (vision, connector, llm, lora) and `all` parameters, for a stage that
    freezes `freeze` and, with `lora` (r >= 1), adds its adapters: the training loop's own rules
    (mm1.model.lora), applied to a meta-device model."""
    from mm1.model.freeze import apply_freeze
    from mm1.model.lora import add_lora, lora_enabled, trainable_by_part

    config = mm1_config(preset) if isinstance(preset, str) else preset
    model = _meta_model(config)
    apply_freeze(model, freeze)
    if lora_enabled(lora):
        add_lora(model, lora, freeze, key="lora")
    return trainable_by_part(model)


def format_trainable_info(
    preset: str | Sequence[str] | None = None, freeze: Sequence[str] = (), lora: LoraConfig | None = None
) -> str:
    """A text table of trainable_info per preset: parts, their sum and its share of all parameters."""
    names = list(PRESETS) if preset is None else [preset] if isinstance(preset, str) else list(preset)
    header = ["preset", "vision", "connector", "llm", "lora", "trainable", "all", "share"]
    rows = []
    for name in names:
        counts = trainable_info(name, freeze, lora)
        trained = sum(counts[p] for p in ("vision", "connector", "llm", "lora"))
        cells = [_human(counts[p]) for p in ("vision", "connector", "llm", "lora")]
        rows.append([name, *cells, _human(trained), _human(counts["all"]), f"{trained / counts['all']:.2%}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    adapters = (
        f"LoRA r={lora.r} on {','.join(lora.parts)}: {','.join(lora.target_modules)}"
        if lora is not None and lora.r > 0
        else "no LoRA"
    )
    title = f"trainable parameters (freeze: {', '.join(freeze) or 'nothing'}; {adapters})"
    return "\n".join([title, *lines])
