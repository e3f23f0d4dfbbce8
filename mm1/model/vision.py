"""The image encoder: any Hugging Face vision tower, returning a grid of features as a sequence.

Two kinds of tower:
  transformers (CLIP, SigLIP, any ViT-like config with `patch_size`): one feature per patch, CLS and other
      prefix tokens dropped; position embeddings interpolated when run off their native resolution;
  convolutional (ResNet, ConvNeXt): the last stage's feature map [N, C, h, w], flattened row-major. Any input
      size that is a multiple of the tower's total stride works.
`feature_geometry(vision_config)` says, from the config alone, how many pixels one feature covers and how
wide it is, so configs are checked and FLOPs counted without building the tower.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from mm1.model_checks import FeatureGeometry
from mm1.model_checks import feature_geometry as _geometry

__all__ = ["FeatureGeometry", "VisionTower", "feature_geometry", "vision_config_from_pretrained"]

# Submodules the towers own but never use for patch features: CLIP's post_layernorm only feeds the pooled CLS
# output, SigLIP's attention-pooling head only the pooled output. They are replaced by nn.Identity, so every
# parameter of the tower receives a gradient (DDP requires it, and a reloaded checkpoint cannot bring them back
# as trainable); their weights in pretrained checkpoints are skipped on load.
UNUSED_MODULES: dict[str, tuple[str, ...]] = {
    "clip_vision_model": ("post_layernorm",),
    "siglip_vision_model": ("head",),
    "convnext": ("layernorm",),  # normalizes the pooled output only
    "convnextv2": ("layernorm",),
}


def feature_geometry(vision_config: PretrainedConfig) -> FeatureGeometry:
    """mm1.model_checks.feature_geometry on a built config (one home: `mm1 validate` uses it torch-free)."""
    return _geometry(vision_config.to_dict())


def vision_config_from_pretrained(name_or_path: str) -> PretrainedConfig:
    """The vision config of a HF checkpoint; a full CLIP/SigLIP checkpoint yields its vision half."""
    config = AutoConfig.from_pretrained(name_or_path)
    return getattr(config, "vision_config", None) or config


class VisionTower(nn.Module):
    """Wraps a HF vision model; runs it at `image_size`, interpolating position embeddings when that differs."""

    def __init__(self, vision_config: PretrainedConfig, image_size: int):
        super().__init__()
        self.model = AutoModel.from_config(vision_config)
        self.geometry = feature_geometry(vision_config)
        self.resize(image_size)
        self.unused = tuple(
            m for m in UNUSED_MODULES.get(vision_config.model_type, ()) if hasattr(self.model, m)
        )
        for name in self.unused:
            setattr(self.model, name, nn.Identity())

    def resize(self, image_size: int) -> None:
        """Run at `image_size` from now on (e.g. a fine-tuning stage at a higher resolution than pre-training).
        A ViT keeps its position embeddings at their native size and interpolates them (bicubic, as
        transformers does) to every other size at each forward, so all sizes share one learned table; a
        convolutional tower takes any multiple of its stride as it is."""
        native = self.geometry.native_size or image_size
        accepts = inspect.signature(self.model.forward).parameters
        if image_size != native and "interpolate_pos_encoding" not in accepts:
            raise ValueError(
                f"{type(self.model).__name__} was built for {native} px and cannot interpolate its "
                f"position embeddings to image_size={image_size}"
            )
        self.image_size, self.native_size = image_size, native
        self.num_patches = (image_size // self.geometry.stride) ** 2

    def load_pretrained(self, name_or_path: str) -> None:
        """Copy weights from a HF vision checkpoint (a vision-only or a full CLIP/SigLIP one)."""
        pretrained = type(self.model).from_pretrained(name_or_path)
        skipped = tuple(f"{name}." for name in self.unused)
        state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(skipped)}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"vision weights from {name_or_path} do not fit: missing {missing}, unexpected {unexpected}"
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, num_patches, channels] with S == image_size."""
        height, width = pixel_values.shape[-2:]
        if height != self.image_size or width != self.image_size:
            raise ValueError(
                f"pixel_values are {height}x{width} but the model expects {self.image_size}x{self.image_size}"
            )
        kwargs = {"interpolate_pos_encoding": True} if self.image_size != self.native_size else {}
        dtype = next(self.model.parameters()).dtype
        pixel_values = pixel_values.to(dtype)
        if self.geometry.native_size is None:
            # Convolutions run in channels-last layout from their input on (the layout propagates through
            # the tower): tiny-cnn's forward and backward over 120 images at 64 px took 0.16 s instead of
            # 0.22 s on a 2-core CPU (the quick start's whole pre-training step 6-10% less).
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        hidden = self.model(pixel_values=pixel_values, **kwargs).last_hidden_state
        if hidden.dim() == 4:  # a convolutional tower's feature map [N, C, h, w] -> [N, h * w, C]
            return hidden.permute(0, 2, 3, 1).flatten(1, 2)
        # Patch tokens are the last num_patches positions (CLIP prepends one CLS token, SigLIP none).
        return hidden[:, -self.num_patches :]
