"""Decode-and-verify at ingest: every kept image becomes RGB PNG bytes at its native size.

Decoding goes through `mm1.data.preprocess.load_image` (the shared path), so an image that ingest keeps is
one that training, evaluation and serving can load. Resizing waits for training time: the model's
resolution can differ between the candidates of a sweep.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from mm1 import storage
from mm1.data.preprocess import ImageDecodeError, load_image
from mm1.data.records import (
    IMAGE_TOO_LARGE,
    MISSING_IMAGE_FILE,
    NOT_AN_IMAGE,
    TRUNCATED_IMAGE,
)

PNG_COMPRESS_LEVEL = 3  # fast to write; decoding speed barely depends on it


class BadImage(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _classify(exc: ImageDecodeError) -> str:
    cause = exc.__cause__
    if isinstance(cause, FileNotFoundError):
        return MISSING_IMAGE_FILE
    if isinstance(cause, UnidentifiedImageError):
        return NOT_AN_IMAGE
    return TRUNCATED_IMAGE


def to_png(data: bytes) -> bytes:
    """Verify encoded image bytes; returns RGB PNG bytes (the input itself when it already is one)."""
    try:
        image = load_image(data)
    except ImageDecodeError as exc:
        raise BadImage(_classify(exc), str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise BadImage(IMAGE_TOO_LARGE, str(exc)) from None
    if image.format == "PNG":  # load_image returned the decoded file unchanged: already RGB PNG
        return data
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def verify_source(source: bytes | str) -> bytes:
    """Bytes, or a local/URI path, to verified PNG bytes; raises BadImage with a reason."""
    if isinstance(source, str):
        try:
            source = storage.read_bytes(source)
        except FileNotFoundError:
            raise BadImage(MISSING_IMAGE_FILE, f"image file not found: {source}") from None
        except OSError as exc:
            raise BadImage(MISSING_IMAGE_FILE, f"cannot read {source}: {exc}") from None
    return to_png(bytes(source))


def png_encode(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()
