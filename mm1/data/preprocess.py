"""The one image preprocessing path shared by ingest, evaluation and serving.

Train/serve skew is designed out by having every consumer call these functions: `load_image` turns any
accepted source into an RGB PIL image, `preprocess_image` resizes it to the model's resolution as uint8
(the form stored in shards), `split_image` makes the high-resolution crops + overview (tiling the image in
the grid layout that fits its aspect ratio, `choose_layout`), and
`to_pixel_values` normalizes uint8 arrays into the float tensor the vision tower takes, and `pixel_values` is
the two together (what evaluation and serving call; training splits in its Ray Data workers and normalizes in
its collate, with the same two functions).

The normalization constants are the vision tower's own: `image_processor_stats` reads them from the tower's
`preprocessor_config.json` (`model.vision`), and they travel in MM1Config.image_mean/std and the processor;
a tower without one (random init from a preset) uses CLIP's constants.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from mm1.storage import read_bytes

if TYPE_CHECKING:
    import torch

# CLIP's normalization constants: the default for every vision tower we build or load.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


IMAGE_PROCESSOR_FILE = "preprocessor_config.json"


def image_processor_stats(name_or_path: str) -> dict | None:
    """The pixel settings of a Hugging Face vision checkpoint's image processor: {"image_mean", "image_std",
    "image_size"} (size None when the file gives none), or None when it has no preprocessor_config.json.

    Reads JSON only (no torch, no transformers) for a local folder, so `mm1 validate` can call it; a hub name
    goes through huggingface_hub's cache (a download on a machine with network)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        path = folder / IMAGE_PROCESSOR_FILE
        if not path.is_file():
            return None
    elif folder.exists() or name_or_path.startswith((".", "/")):
        return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = Path(hf_hub_download(name_or_path, IMAGE_PROCESSOR_FILE))
        except EntryNotFoundError:
            return None
    settings = json.loads(path.read_text())
    size = settings.get("crop_size") if settings.get("do_center_crop") else settings.get("size")
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    return {
        "image_mean": [float(v) for v in settings.get("image_mean", CLIP_MEAN)],
        "image_std": [float(v) for v in settings.get("image_std", CLIP_STD)],
        "image_size": size if isinstance(size, int) else None,
    }


class ImageDecodeError(ValueError):
    """Bytes or a file that cannot be decoded as an image (truncated, not an image, missing)."""


def load_image(source: bytes | str | Path | Image.Image | np.ndarray) -> Image.Image:
    """Decode `source` (encoded bytes, a path or mm1.storage location, a PIL image or an HxWx3 uint8 array)
    to RGB."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = Image.fromarray(source.astype(np.uint8))
    else:
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                image = Image.open(io.BytesIO(bytes(source)))
            else:
                image = Image.open(io.BytesIO(read_bytes(str(source))))
            image.load()  # force a full decode so truncated files fail here, not later
        except FileNotFoundError as exc:
            raise ImageDecodeError(f"image file not found: {source}") from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    return image.convert("RGB") if image.mode != "RGB" else image


def preprocess_image(source: bytes | str | Path | Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Decode and resize to `size` x `size`; returns uint8 [size, size, 3]."""
    image = load_image(source)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def crops_per_image(grid: int) -> int:
    """Sub-images `split_image` makes of one image: grid x grid crops and the overview, or the image alone."""
    return grid * grid + 1 if grid > 1 else 1


def image_tokens_per_image(tokens_per_crop: int, grid: int) -> int:
    """Image tokens that stand for one image in a sequence: the connector's tokens for each of its crops."""
    return tokens_per_crop * crops_per_image(grid)


# A grid layout: (rows, columns) of crops. Every layout of a split has grid*grid crops, so an image's token
# count never depends on its shape (packing, batch shapes and a served context stay predictable, as in MM1's
# fixed 4 crops + overview); the layout only decides how those crops tile the image.
Layout = tuple[int, int]
MAX_LAYOUT_ASPECT = 4  # automatic layouts: at most 4:1 (a 1x4 or 4x1 strip for grid 2)


def parse_layout(text: str) -> Layout:
    """'2x2' -> (2, 2): rows x columns."""
    rows, sep, cols = str(text).lower().partition("x")
    if not sep or not rows.strip().isdigit() or not cols.strip().isdigit() or not int(rows) or not int(cols):
        raise ValueError(f"'{text}' is not a grid layout: expected ROWSxCOLUMNS such as 2x2 or 1x4")
    return int(rows), int(cols)


def grid_layouts(grid: int, declared: list[str] | tuple | None = None) -> tuple[Layout, ...]:
    """The layouts a split into grid*grid crops chooses from: those in `declared` (ROWSxCOLUMNS strings or
    pairs) with rows * columns == grid*grid, or, when none are declared, every such layout up to
    MAX_LAYOUT_ASPECT:1 (grid 2: 1x4, 2x2, 4x1). The square is always one of them."""
    if grid <= 1:
        return ((1, 1),)
    count = grid * grid
    pairs = [parse_layout(d) if isinstance(d, str) else (int(d[0]), int(d[1])) for d in declared or ()]
    if pairs:
        wrong = [f"{r}x{c}" for r, c in pairs if r * c != count]
        if wrong:
            raise ValueError(
                f"grid layouts {wrong} do not have {count} crops (image_grid {grid} splits into {grid}x{grid})"
            )
        return tuple(dict.fromkeys([*pairs, (grid, grid)]))
    return tuple(
        (r, count // r)
        for r in range(1, count + 1)
        if count % r == 0 and max(r, count // r) <= MAX_LAYOUT_ASPECT * min(r, count // r)
    )


def choose_layout(width: int, height: int, layouts: tuple[Layout, ...]) -> Layout:
    """The layout whose shape (columns / rows) is closest to the image's (width / height), on a log scale so
    2:1 and 1:2 are equally far from square; ties go to the squarer layout, then to the first."""
    aspect = math.log(max(width, 1) / max(height, 1))
    return min(
        layouts,
        key=lambda rc: (round(abs(math.log(rc[1] / rc[0]) - aspect), 9), abs(math.log(rc[1] / rc[0]))),
    )


def split_image(
    source: bytes | str | Path | Image.Image | np.ndarray,
    size: int,
    grid: int,
    layouts: tuple[Layout, ...] | list | None = None,
) -> list[np.ndarray]:
    """MM1's sub-image decomposition: grid*grid crops (row-major) then a downscaled overview.

    The crops tile the image in the layout of `layouts` (default: the square grid x grid alone) that best fits
    its aspect ratio (`choose_layout`): the image is resized to (columns*size) x (rows*size), so every crop is
    `size` x `size`. grid=1 returns the overview alone, i.e. the same as `preprocess_image`.
    """
    image = load_image(source)
    if grid <= 1:
        return [preprocess_image(image, size)]
    rows, cols = choose_layout(*image.size, tuple(layouts) if layouts else ((grid, grid),))
    if rows * cols != grid * grid:
        raise ValueError(f"layout {rows}x{cols} does not have the {grid * grid} crops of image_grid {grid}")
    big = image.resize((cols * size, rows * size), Image.Resampling.BICUBIC)
    crops = [
        np.asarray(big.crop((c * size, r * size, (c + 1) * size, (r + 1) * size)), dtype=np.uint8)
        for r in range(rows)
        for c in range(cols)
    ]
    return crops + [preprocess_image(image, size)]


def to_pixel_values(
    arrays: list[np.ndarray] | np.ndarray,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
) -> torch.Tensor:
    """uint8 [N, H, W, 3] (or a list of [H, W, 3]) -> normalized float32 [N, 3, H, W]."""
    import torch  # here, not at the top: Ray Data workers that only decode and resize never load torch

    stacked = np.stack(list(arrays)) if isinstance(arrays, list) else arrays
    if stacked.size == 0:
        return torch.zeros(0, 3, 1, 1)
    pixels = torch.from_numpy(np.ascontiguousarray(stacked)).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def pixel_values(
    images: list,
    size: int,
    grid: int,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    layouts: tuple[Layout, ...] | list | None = None,
) -> torch.Tensor:
    """Image sources -> [len(images) * crops_per_image(grid), 3, size, size] float32, normalized with the
    tower's mean/std: `split_image` then `to_pixel_values`, the path every consumer takes."""
    import torch

    arrays = [crop for image in images for crop in split_image(image, size, grid, layouts)]
    if not arrays:
        return torch.zeros(0, 3, size, size)
    return to_pixel_values(arrays, mean, std)
