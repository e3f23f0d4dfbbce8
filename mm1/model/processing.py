"""`MM1Processor`: the tokenizer plus the image settings a checkpoint was trained with.

It is what data, eval and serving import to turn images and chats into model inputs, so all of them use the
same preprocessing (mm1.data.preprocess.pixel_values, with the vision tower's own mean/std from MM1Config) and
chat template (mm1.data.chat: the tokenizer's own when it has one). It is saved beside the weights: the
tokenizer files (with its chat template) plus `preprocessor_config.json`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mm1.data.chat import (
    IMAGE,
    Encoded,
    ImageSlot,
    encode_conversation,
    encode_document,
    encode_prompt,
    reserved_tokens,
)
from mm1.data.chat import stop_token_ids as chat_stop_token_ids
from mm1.data.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    Layout,
    grid_layouts,
    image_tokens_per_image,
    pixel_values,
)
from mm1.model.configuration import MM1Config

PROCESSOR_FILE = "preprocessor_config.json"


class MM1Processor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int,
        image_grid: int = 1,
        num_image_tokens: int = 144,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        image_layouts: Sequence[Sequence[int]] | None = None,
    ):
        if image_grid < 1:
            raise ValueError(f"image_grid must be >= 1, got {image_grid}")
        # The crop layouts a split chooses from by aspect ratio (None: the square grid alone).
        self.image_layouts: tuple[Layout, ...] = (
            grid_layouts(image_grid, [tuple(p) for p in image_layouts])
            if image_layouts and image_grid > 1
            else ((image_grid, image_grid),)
        )
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.image_grid = image_grid
        self.num_image_tokens = num_image_tokens
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)

    @classmethod
    def from_config(cls, config: MM1Config, tokenizer: PreTrainedTokenizerBase) -> MM1Processor:
        """The processor matching a model config (the way to make one for a freshly built model)."""
        image_id = tokenizer.convert_tokens_to_ids(IMAGE)
        if image_id != config.image_token_id:
            raise ValueError(
                f"tokenizer maps {IMAGE} to {image_id} but the model's image_token_id is {config.image_token_id}"
            )
        return cls(
            tokenizer,
            image_size=config.image_size,
            image_grid=config.image_grid,
            num_image_tokens=config.num_image_tokens,
            image_mean=config.image_mean,
            image_std=config.image_std,
            image_layouts=config.layouts,
        )

    @functools.cached_property
    def reserved_tokens(self) -> frozenset[str]:
        """Strings user text may not contain (they would tokenize as special tokens): ours, the tokenizer's
        special tokens and every token added to it (an LLM's turn markers such as <|im_start|>)."""
        return frozenset(reserved_tokens(self.tokenizer))

    @property
    def image_tokens_per_image(self) -> int:
        return image_tokens_per_image(self.num_image_tokens, self.image_grid)

    # -- images -------------------------------------------------------------------------------------------
    def images_to_pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        """Image sources (bytes, paths, PIL, uint8 arrays) -> [len(images) * sub_images, 3, S, S] float32."""
        return pixel_values(
            images, self.image_size, self.image_grid, self.image_mean, self.image_std, self.image_layouts
        )

    # -- text ---------------------------------------------------------------------------------------------
    def encode_document(self, parts: Sequence[str | ImageSlot]) -> Encoded:
        """Pre-training sample (text and ImageSlot markers in document order); see mm1.data.chat."""
        return encode_document(self.tokenizer, parts, self.image_tokens_per_image)

    def encode_conversation(self, turns: Sequence[dict]) -> Encoded:
        """SFT conversation, labels on the assistant's answers; `<image>` in user text marks an image."""
        return encode_conversation(self.tokenizer, turns, self.image_tokens_per_image)

    def encode_chat(
        self, turns: Sequence[dict], images: Sequence[Any] = ()
    ) -> dict[str, torch.Tensor | None]:
        """A generation prompt: input_ids / attention_mask [1, L] and pixel_values (None without images)."""
        encoded = encode_prompt(self.tokenizer, turns, self.image_tokens_per_image)
        if encoded.num_images != len(images):
            raise ValueError(
                f"the chat has {encoded.num_images} {IMAGE} markers but {len(images)} images were given"
            )
        input_ids = torch.tensor([encoded.input_ids], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": self.images_to_pixel_values(images) if images else None,
        }

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def stop_token_ids(self) -> list[int]:
        return chat_stop_token_ids(self.tokenizer)

    # -- persistence --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "processor_class": type(self).__name__,
            "image_size": self.image_size,
            "image_grid": self.image_grid,
            "image_layouts": [list(layout) for layout in self.image_layouts],
            "num_image_tokens": self.num_image_tokens,
            "image_tokens_per_image": self.image_tokens_per_image,  # derived; written for readers of the file
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            # Where AutoProcessor.from_pretrained(dir, trust_remote_code=True) finds this class (remote_code.py).
            "auto_map": {"AutoProcessor": "processing.MM1Processor"},
        }

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        (directory / PROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """Called by transformers' AutoProcessor when it loads this class as remote code; nothing to record."""

    @classmethod
    def from_pretrained(cls, directory: str | Path, **hub_kwargs: Any) -> MM1Processor:
        """`hub_kwargs` (revision, trust_remote_code, ... as AutoProcessor passes them) are ignored: `directory`
        is a local folder."""
        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {PROCESSOR_FILE} in {directory}: not an MM1 checkpoint directory")
        settings = json.loads(path.read_text())
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(
            tokenizer,
            image_size=settings["image_size"],
            image_grid=settings["image_grid"],
            num_image_tokens=settings["num_image_tokens"],
            image_mean=settings["image_mean"],
            image_std=settings["image_std"],
            image_layouts=settings.get("image_layouts"),  # absent before layouts existed: the square
        )
