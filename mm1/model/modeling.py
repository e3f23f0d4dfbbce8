"""`MM1ForConditionalGeneration`: vision tower -> connector -> image tokens spliced into the LLM's input.

Inputs follow one convention shared with mm1.data and the processor:
  input_ids      [B, L]; every image stands as `image_tokens_per_image` consecutive `image_token_id`s.
  pixel_values   [N_sub, 3, S, S]: all images of the batch in order of appearance (row-major over the batch);
                 with image_grid > 1 each image is grid*grid crops + 1 overview, as split_image orders them.
  position_ids   optional; restarting at 0 inside a row marks packed documents, which then cannot attend
                 to each other (see packing.py).
  labels         [B, L] with IGNORE_INDEX (-100) on prompts, images and padding; loss on the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from mm1.data.chat import IGNORE_INDEX
from mm1.model.configuration import MM1Config
from mm1.model.connectors import AttnPoolConnector, build_connector
from mm1.model.moe import SparseMoE, add_moe_layers, collect_router_losses
from mm1.model.packing import document_ids, packed_attention_mask
from mm1.model.vision import VisionTower


@dataclass
class MM1CausalLMOutput(CausalLMOutputWithPast):
    """`loss` is the training objective: lm_loss (+ weighted MoE losses); the parts are exposed unweighted."""

    lm_loss: torch.Tensor | None = None
    load_balancing_loss: torch.Tensor | None = None
    router_z_loss: torch.Tensor | None = None


class MM1PreTrainedModel(PreTrainedModel):
    config: MM1Config
    config_class = MM1Config
    base_model_prefix = "mm1"
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, AttnPoolConnector):
            nn.init.normal_(module.queries, std=std)
        elif isinstance(module, SparseMoE):
            nn.init.normal_(module.router.weight, std=std)


def image_placeholder_runs(mask: torch.Tensor) -> torch.Tensor:
    """Lengths of the runs of True in a [B, L] bool mask, row-major (runs never span rows)."""
    edges = torch.diff(F.pad(mask.int(), (1, 1)), dim=-1)
    starts = (edges == 1).nonzero()[:, 1]
    ends = (edges == -1).nonzero()[:, 1]
    return ends - starts


class MM1ForConditionalGeneration(MM1PreTrainedModel, GenerationMixin):
    def __init__(self, config: MM1Config):
        super().__init__(config)
        self.vision_tower = VisionTower(config.vision_config, config.image_size)
        self.connector = build_connector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        if config.moe_num_experts:
            add_moe_layers(
                self.language_model,
                config.moe_num_experts,
                config.moe_every,
                config.moe_top_k,
                config.initializer_range,
            )
        self.post_init()

    def set_image_settings(
        self, image_size: int, image_grid: int, image_layouts: list[list[int]] | None = None
    ) -> None:
        """Switch resolution and image splitting (a training stage's own settings, e.g. MM1's high-resolution
        SFT after 378 px pre-training). The config records them, so a checkpoint saved afterwards gives its
        processor, evaluation and serving the same; the tower interpolates its position embeddings to the new
        size (VisionTower.resize). The connector pools any patch grid to its tokens, so the weights stay."""
        previous = (self.config.image_size, self.config.image_grid, self.config.image_layouts)
        self.config.image_size, self.config.image_grid = image_size, image_grid
        self.config.image_layouts = [list(layout) for layout in image_layouts] if image_layouts else None
        try:
            self.config._check()
            self.vision_tower.resize(image_size)
        except ValueError:
            self.config.image_size, self.config.image_grid, self.config.image_layouts = previous
            raise

    # The LLM owns the embeddings; generate() and resize_token_embeddings() find them through these.
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N_sub, 3, S, S] -> [N_sub, num_image_tokens, llm_hidden]."""
        return self.connector(self.vision_tower(pixel_values))

    def merge_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, pixel_values: torch.Tensor | None
    ) -> torch.Tensor:
        """Replace the image placeholders, in order, by the features of the images in `pixel_values`."""
        config = self.config
        per_image = config.image_tokens_per_image
        placeholder = input_ids == config.image_token_id
        num_placeholders = int(placeholder.sum())
        num_sub = 0 if pixel_values is None else pixel_values.shape[0]
        if num_sub % config.sub_images_per_image:
            raise ValueError(
                f"pixel_values holds {num_sub} sub-images, not a multiple of the {config.sub_images_per_image} "
                f"each image contributes with image_grid={config.image_grid}"
            )
        num_images = num_sub // config.sub_images_per_image
        if num_placeholders != num_images * per_image:
            raise ValueError(
                f"input_ids hold {num_placeholders} image placeholders ({num_placeholders / per_image:g} images "
                f"at {per_image} tokens each) but {num_images} images were given ({num_sub} sub-images in "
                f"pixel_values)"
            )
        if num_images == 0:
            return inputs_embeds
        runs = image_placeholder_runs(placeholder)
        if bool((runs % per_image).any()):
            raise ValueError(
                f"image placeholder runs of lengths {runs.tolist()} are not whole images of {per_image} tokens "
                "(an image cut by truncation or packing?)"
            )
        features = self.get_image_features(pixel_values).reshape(-1, inputs_embeds.shape[-1])
        return inputs_embeds.masked_scatter(placeholder.unsqueeze(-1), features.to(inputs_embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        loss_only: bool = False,
        **kwargs,
    ) -> MM1CausalLMOutput:
        """`past_key_values` is accepted as the older name of `cache`. `num_items_in_batch` (the count of
        label tokens over all gradient-accumulation micro-batches) turns the mean loss into sum / that count.
        `loss_only` (with labels; training's step): the LM head runs only where a next token is to be
        predicted, and no logits are returned."""
        if loss_only and labels is None:
            raise ValueError("loss_only needs labels")
        if cache is not None and past_key_values is not None:
            raise ValueError("pass the KV cache as `cache` or `past_key_values`, not both")
        cache = cache if cache is not None else past_key_values
        past_length = cache.get_seq_length() if cache is not None else 0

        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or inputs_embeds")
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if pixel_values is not None or past_length == 0:
                inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, pixel_values)
        elif pixel_values is not None:
            raise ValueError("pixel_values cannot be combined with inputs_embeds (merge the images yourself)")

        llm_mask = attention_mask
        docs = document_ids(position_ids) if position_ids is not None and past_length == 0 else None
        if docs is not None:
            llm_mask = packed_attention_mask(self.config.text_config, inputs_embeds, attention_mask, docs)

        # Position t predicts label t + 1: with loss_only the head sees only the positions whose next label
        # counts (prompts, images and padding carry none).
        predicting = F.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1)) if loss_only else None
        with head_only_at(self.language_model.get_output_embeddings(), predicting):
            outputs = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=llm_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        logits = outputs.logits

        if predicting is not None:
            lm_loss = token_loss(logits, labels[:, 1:][predicting[:, :-1]], num_items_in_batch)
            logits = None
        else:
            lm_loss = None if labels is None else causal_lm_loss(logits, labels, num_items_in_batch)
        loss = lm_loss
        router = collect_router_losses(self.language_model) if self.config.moe_num_experts else None
        balance, z = router if router is not None else (None, None)
        if loss is not None and router is not None:
            loss = loss + self.config.moe_aux_loss_coef * balance + self.config.moe_z_loss_coef * z

        return MM1CausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            lm_loss=lm_loss,
            load_balancing_loss=balance,
            router_z_loss=z,
        )


def upcycle_to_moe(
    model: MM1ForConditionalGeneration, num_experts: int, every: int = 2, top_k: int = 2
) -> None:
    """Turn a dense MM1 into MM1-MoE in place: every `every`-th LLM MLP becomes `num_experts` copies of itself
    behind a fresh top-`top_k` router; the config records it so save/load rebuilds the same structure."""
    if model.config.moe_num_experts:
        raise ValueError(f"the model is already sparse ({model.config.moe_num_experts} experts)")
    add_moe_layers(model.language_model, num_experts, every, top_k, model.config.initializer_range)
    model.config.moe_num_experts, model.config.moe_every, model.config.moe_top_k = num_experts, every, top_k
    model.config._check()


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy in fp32 over labels != IGNORE_INDEX."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    return token_loss(shift_logits, labels[:, 1:].reshape(-1), num_items_in_batch)


def token_loss(
    logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy in fp32 of [N, vocab] logits against [N] targets (IGNORE_INDEX ones skipped): the mean,
    or the sum / num_items_in_batch."""
    logits, targets = logits.float(), targets.to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum") / num_items_in_batch


@contextlib.contextmanager
def head_only_at(head: nn.Module, positions: torch.Tensor | None) -> Iterator[None]:
    """While inside, `head` (the LLM's output projection) runs only on the hidden states at `positions`
    ([B, L] bool): its input [B, L, d] becomes [N, d], row-major. Whatever the causal LM does to the head's
    output (a logit scale, soft-capping) still applies. None: unchanged."""
    if positions is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][positions], *args[1:]))
    try:
        yield
    finally:
        handle.remove()
