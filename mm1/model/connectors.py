"""Vision-language connectors: patch features [N, P, Dv] -> k image tokens [N, k, D_llm].

The three MM1 compares (its lesson: the type matters little, the token count and resolution matter most),
registered by name in mm1.registry.CONNECTORS (`model.connector.type` in a workflow):
  avgpool       n x n adaptive average pooling over the patch grid, then a linear map.
  attnpool      k learned queries cross-attend to the patch features, then a linear map.
  c-abstractor  Honeybee's C-Abstractor: residual conv blocks -> adaptive avg-pool to sqrt(k) x sqrt(k)
                -> residual conv blocks -> 2-layer MLP. Convolutions keep the locality that pooling loses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mm1.model.configuration import MM1Config
from mm1.registry import CONNECTORS


def _to_grid(features: torch.Tensor) -> torch.Tensor:
    """[N, P, C] with P a square -> [N, C, sqrt(P), sqrt(P)]."""
    n, p, c = features.shape
    side = math.isqrt(p)
    if side * side != p:
        raise ValueError(f"{p} patch features do not form a square grid")
    return features.transpose(1, 2).reshape(n, c, side, side)


def _from_grid(grid: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> [N, h*w, C] (row-major)."""
    return grid.flatten(2).transpose(1, 2)


class AvgPoolConnector(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int, num_tokens: int):
        super().__init__()
        self.side = math.isqrt(num_tokens)
        self.proj = nn.Linear(vision_hidden, text_hidden)

    @classmethod
    def from_config(cls, config: MM1Config) -> AvgPoolConnector:
        return cls(config.vision_hidden_size, config.text_config.hidden_size, config.num_image_tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(_to_grid(features), self.side)
        return self.proj(_from_grid(pooled))


class AttnPoolConnector(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int, num_tokens: int, num_heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_tokens, vision_hidden) * 0.02)
        self.norm = nn.LayerNorm(vision_hidden)
        self.attn = nn.MultiheadAttention(vision_hidden, num_heads, batch_first=True)
        self.proj = nn.Linear(vision_hidden, text_hidden)

    @classmethod
    def from_config(cls, config: MM1Config) -> AttnPoolConnector:
        vision_hidden = config.vision_hidden_size
        # A CNN tower has no attention heads to copy: the largest of 8, 4, 2, 1 that divides its width.
        heads = getattr(config.vision_config, "num_attention_heads", None) or next(
            h for h in (8, 4, 2, 1) if vision_hidden % h == 0
        )
        return cls(vision_hidden, config.text_config.hidden_size, config.num_image_tokens, heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        keys = self.norm(features)
        queries = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        pooled, _ = self.attn(queries, keys, keys, need_weights=False)
        return self.proj(pooled)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels at every spatial position of [N, C, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """RegNet-style bottleneck (1x1 -> depthwise 3x3 -> 1x1) with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),
            LayerNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            LayerNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
            LayerNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x + self.body(x))


class CAbstractor(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int, num_tokens: int, depth: int, channels: int):
        super().__init__()
        self.side = math.isqrt(num_tokens)
        self.stage1 = nn.Sequential(
            nn.Conv2d(vision_hidden, channels, 1), *[ResBlock(channels) for _ in range(depth)]
        )
        self.stage2 = nn.Sequential(*[ResBlock(channels) for _ in range(depth)])
        self.readout = nn.Sequential(
            nn.Linear(channels, text_hidden), nn.GELU(), nn.Linear(text_hidden, text_hidden)
        )

    @classmethod
    def from_config(cls, config: MM1Config) -> CAbstractor:
        vision_hidden = config.vision_hidden_size
        channels = config.connector_hidden_size or vision_hidden
        return cls(
            vision_hidden,
            config.text_config.hidden_size,
            config.num_image_tokens,
            config.connector_depth,
            channels,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        grid = self.stage1(_to_grid(features))
        grid = self.stage2(F.adaptive_avg_pool2d(grid, self.side))
        return self.readout(_from_grid(grid))


def build_connector(config: MM1Config) -> nn.Module:
    """The connector `config.connector_type` names (mm1.registry.CONNECTORS says which class builds it)."""
    spec = CONNECTORS.get(config.connector_type)
    if spec is None:
        raise ValueError(
            f"unknown connector_type {config.connector_type!r}; expected one of {list(CONNECTORS)}"
        )
    return globals()[spec.builder].from_config(config)
