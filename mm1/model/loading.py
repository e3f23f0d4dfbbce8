"""One way to write and read a checkpoint (train writes; eval, select and serving read), and one batched
greedy answering helper that eval and serving share so they decode identically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mm1 import storage
from mm1.model.modeling import MM1ForConditionalGeneration
from mm1.model.processing import PROCESSOR_FILE, MM1Processor

Chat = tuple[Sequence[dict], Sequence[Any]]  # (turns, image sources)


def save_for_inference(
    model: MM1ForConditionalGeneration, processor: MM1Processor, directory: str | Path
) -> None:
    """config.json + model.safetensors + tokenizer files + preprocessor_config.json in one directory."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def _default_dtype(device: str) -> torch.dtype:
    # bf16 halves memory on GPUs; on CPUs it is orders of magnitude slower, so stay in fp32 there.
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_for_inference(
    path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[MM1ForConditionalGeneration, MM1Processor]:
    """Load a checkpoint directory written by `save_for_inference`, in eval mode, on `device`. `path` is any
    mm1.storage location: a folder on an object store (s3://...) is copied to this machine once."""
    path = Path(storage.local_copy(str(path)))
    for name in ("config.json", PROCESSOR_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not an MM1 checkpoint directory: {name} is missing")
    model = MM1ForConditionalGeneration.from_pretrained(path, dtype=dtype or _default_dtype(device))
    model = model.to(device).eval()
    processor = MM1Processor.from_pretrained(path)
    config = model.config
    expected = (config.image_size, config.image_grid, config.num_image_tokens)
    found = (processor.image_size, processor.image_grid, processor.num_image_tokens)
    if expected != found:
        raise ValueError(
            f"processor (image_size, image_grid, num_image_tokens)={found} does not match the model's {expected}"
        )
    return model, processor


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, L_i] prompts -> input_ids and attention_mask [B, max L], padded on the left for generation."""
    length = max(row.shape[-1] for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - row.shape[-1] :] = row[0]
        mask[i, length - row.shape[-1] :] = 1
    return ids, mask


_left_pad = left_pad  # the name mm1.eval.generation imports


@torch.inference_mode()
def generate_answers(
    model: MM1ForConditionalGeneration,
    processor: MM1Processor,
    chats: Sequence[Chat],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy answers to (turns, images) chats, `batch_size` at a time with left padding; each answer ends at
    the first stop token (mm1.data.chat.stop_token_ids) and is returned without special tokens."""
    stop_ids = processor.stop_token_ids()
    pad_id = processor.tokenizer.pad_token_id
    answers: list[str] = []
    for start in range(0, len(chats), batch_size):
        encoded = [
            processor.encode_chat(turns, images) for turns, images in chats[start : start + batch_size]
        ]
        input_ids, attention_mask = left_pad([e["input_ids"] for e in encoded], pad_id)
        pixels = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
        pixel_values = torch.cat(pixels).to(model.device, model.dtype) if pixels else None
        settings = {
            "do_sample": False,
            "max_new_tokens": max_new_tokens,
            "eos_token_id": stop_ids,
            "pad_token_id": pad_id,
            "suppress_tokens": [model.config.image_token_id],  # a generated placeholder would have no image
            **generate_kwargs,
        }
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            pixel_values=pixel_values,
            **settings,
        )
        for row in output[:, input_ids.shape[1] :].tolist():
            cut = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
            answers.append(processor.decode(row[:cut]).strip())
    return answers
