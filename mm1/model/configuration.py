"""`MM1Config`: image encoder -> vision-language connector -> decoder LLM, plus image splitting and MoE.

The vision and text sub-configs are any Hugging Face configs (CLIP/SigLIP vision, any causal LM); everything
MM1-specific lives in the typed fields below, each with a comment saying what it controls.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from mm1.data.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    Layout,
    crops_per_image,
    grid_layouts,
    image_tokens_per_image,
)
from mm1.model.vision import feature_geometry
from mm1.registry import CONNECTORS, VIT_H_378

CONNECTOR_TYPES = tuple(CONNECTORS)

# Where plain transformers finds the classes of a saved checkpoint without this package
# (`AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)`): module files that
# mm1.model.remote_code.export_remote_code writes into the folder. Every MM1Config carries it.
AUTO_MAP = {
    "AutoConfig": "configuration.MM1Config",
    "AutoModelForImageTextToText": "modeling.MM1ForConditionalGeneration",
    "AutoModelForCausalLM": "modeling.MM1ForConditionalGeneration",
    "AutoProcessor": "processing.MM1Processor",
}


@strict
class MM1Config(PretrainedConfig):
    model_type = "mm1"
    sub_configs_defaults = {
        # MM1's final encoder: ViT-H/14 (CLIP objective) at 378 px.
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type=VIT_H_378["model_type"],
            init_kwargs={k: v for k, v in VIT_H_378.items() if k != "model_type"} | {"hidden_act": "gelu"},
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PretrainedConfig | None = None  # HF vision config: CLIP, SigLIP, ResNet, ConvNeXt
    text_config: dict | PretrainedConfig | None = None  # any HF causal-LM config

    connector_type: str = "c-abstractor"  # a name in mm1.registry.CONNECTORS
    num_image_tokens: int = 144  # k tokens per (sub-)image; a perfect square for avgpool / c-abstractor
    connector_depth: int = 3  # c-abstractor: residual conv blocks before and after the pooling
    connector_hidden_size: int | None = None  # c-abstractor channels; None = vision hidden size

    image_size: int = (
        378  # side of every (sub-)image fed to the encoder; may exceed the encoder's native size
    )
    image_grid: int = 1  # image splitting: grid x grid crops + one overview per image; 1 = off
    # Crop layouts [rows, columns] (each with image_grid^2 crops) a split picks from by the image's aspect
    # ratio (mm1.data.preprocess.choose_layout); None = the square grid alone.
    image_layouts: list[list[int]] | None = None
    image_mean: list[float] | tuple[float, ...] = CLIP_MEAN  # pixel normalization used by the processor
    image_std: list[float] | tuple[float, ...] = CLIP_STD
    image_token_id: int = 3  # placeholder id replaced by image features (<image> in mm1.data.chat)

    moe_num_experts: int = 0  # 0 = dense LLM
    moe_every: int = 2  # the MLP of every m-th decoder layer (m-1, 2m-1, ...) becomes a sparse MoE
    moe_top_k: int = 2  # experts per token
    moe_aux_loss_coef: float = 0.01  # load-balancing loss weight
    moe_z_loss_coef: float = 0.001  # router z-loss weight

    initializer_range: float = 0.02  # std of the connector / router init
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Normalize to lists so the JSON round trip compares equal.
        self.image_mean = list(self.image_mean)
        self.image_std = list(self.image_std)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(AUTO_MAP)
        # Plain ValueErrors (not strict's own error type) so callers can catch them like any bad argument.
        self._check()

    @property
    def sub_images_per_image(self) -> int:
        """Crops + overview when splitting, else the image alone (the order of mm1.data.preprocess.split_image)."""
        return crops_per_image(self.image_grid)

    @property
    def image_tokens_per_image(self) -> int:
        return image_tokens_per_image(self.num_image_tokens, self.image_grid)

    @property
    def layouts(self) -> tuple[Layout, ...]:
        """The crop layouts of image splitting (the processor's `image_layouts`)."""
        if self.image_grid <= 1 or not self.image_layouts:
            return ((self.image_grid, self.image_grid),)
        return grid_layouts(self.image_grid, self.image_layouts)

    @property
    def num_patches(self) -> int:
        """Features the encoder gives per (sub-)image: patches of a ViT, cells of a CNN's last feature map."""
        return (self.image_size // feature_geometry(self.vision_config).stride) ** 2

    @property
    def vision_hidden_size(self) -> int:
        return feature_geometry(self.vision_config).channels

    def _check(self) -> None:
        """Fail at construction, naming the offending values, rather than deep inside a forward pass."""
        if self.connector_type not in CONNECTORS:
            raise ValueError(f"connector_type={self.connector_type!r}; expected one of {CONNECTOR_TYPES}")
        square = CONNECTORS[self.connector_type].square_tokens
        k, patch = self.num_image_tokens, feature_geometry(self.vision_config).stride
        if k <= 0:
            raise ValueError(f"num_image_tokens must be positive, got {k}")
        if square and math.isqrt(k) ** 2 != k:
            raise ValueError(
                f"connector_type={self.connector_type!r} needs a square num_image_tokens, got {k}"
            )
        if self.image_size % patch:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of the vision patch size (or total "
                f"stride) {patch}"
            )
        side = self.image_size // patch
        if square and math.isqrt(k) > side:
            raise ValueError(
                f"num_image_tokens={k} needs a {math.isqrt(k)}x{math.isqrt(k)} pool but the patch grid is "
                f"only {side}x{side} (image_size={self.image_size}, patch_size={patch})"
            )
        if self.image_grid < 1:
            raise ValueError(f"image_grid must be >= 1, got {self.image_grid}")
        self.layouts  # noqa: B018 -- raises on a layout without image_grid^2 crops
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(f"image_mean/std need 3 values, got {self.image_mean} / {self.image_std}")
        if self.moe_num_experts < 0 or self.moe_every < 1:
            raise ValueError(
                f"bad MoE settings: moe_num_experts={self.moe_num_experts}, moe_every={self.moe_every}"
            )
        if self.moe_num_experts and not 1 <= self.moe_top_k <= self.moe_num_experts:
            raise ValueError(
                f"moe_top_k={self.moe_top_k} must be in [1, moe_num_experts={self.moe_num_experts}]"
            )
        vocab = getattr(self.text_config, "vocab_size", None)
        if vocab is not None and not 0 <= self.image_token_id < vocab:
            raise ValueError(
                f"image_token_id={self.image_token_id} is outside the LLM vocabulary (size {vocab})"
            )
