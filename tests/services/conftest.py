"""A tiny random-init checkpoint (made once per session) and helpers for driving the endpoint."""

from __future__ import annotations

import base64
import io
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from mm1.data.tokenizer import train_bpe_tokenizer
from mm1.model import MM1Processor, build_mm1, save_for_inference

SENTENCES = [
    "a red circle and a blue square on a white background",
    "how many shapes are there? there are three shapes.",
    "what color is the triangle? the triangle is green.",
    "is there a yellow star? no, there is not.",
    "the word written in the picture is hello",
]

SERVE_HOST = "127.0.0.1"


@pytest.fixture(scope="session")
def serve_port() -> int:
    """A free port, the same for every Serve test module (Serve keeps a Ray session's first HTTP options);
    not a fixed number, so two test sessions on one machine do not collide."""
    with socket.socket() as probe:
        probe.bind((SERVE_HOST, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer(SENTENCES * 10, vocab_size=320)
    model = build_mm1("tiny", tokenizer)
    folder = tmp_path_factory.mktemp("tiny-mm1")
    save_for_inference(model, MM1Processor.from_config(model.config, tokenizer), folder)
    return str(folder)


def image_bytes(width: int = 48, height: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
