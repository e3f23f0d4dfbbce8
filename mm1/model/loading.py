"""One way to write and read a checkpoint (train writes; eval, select and serving read). Answering with a
loaded checkpoint is mm1.model.decoding's (the one decoder of eval and serving)."""

from __future__ import annotations

from pathlib import Path

import torch

from mm1 import storage
from mm1.model.modeling import MM1ForConditionalGeneration
from mm1.model.processing import PROCESSOR_FILE, MM1Processor
from mm1.model.remote_code import export_remote_code


def save_for_inference(
    model: MM1ForConditionalGeneration, processor: MM1Processor, directory: str | Path
) -> None:
    """config.json + model.safetensors + tokenizer files + preprocessor_config.json in one directory, plus
    the modelling code (mm1.model.remote_code) so plain transformers loads it with trust_remote_code=True."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    export_remote_code(directory)


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
    path = _checkpoint_folder(path)
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


def load_processor(path: str | Path) -> MM1Processor:
    """Only the processor of a checkpoint directory (a serving replica whose model lives in another process)."""
    return MM1Processor.from_pretrained(_checkpoint_folder(path))


def _checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint's local folder (copied from an object store once), checked to hold model and processor."""
    path = Path(storage.local_copy(str(path)))
    for name in ("config.json", PROCESSOR_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not an MM1 checkpoint directory: {name} is missing")
    return path
