"""Small builders for corpus files in the real formats (written here, independently of mm1.data's writers)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def image_bytes(fmt: str = "JPEG", colour=(200, 30, 30), size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


def truncated_jpeg() -> bytes:
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, format="JPEG")
    data = out.getvalue()
    return data[: len(data) // 2]


NOT_AN_IMAGE = b"<html>404 not found</html>"


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_obelics(path: Path, docs: list[tuple[list, list]], image_type: pa.DataType | None = None) -> Path:
    table = pa.table(
        {
            "images": pa.array([d[0] for d in docs], pa.list_(image_type or pa.binary())),
            "texts": pa.array([d[1] for d in docs], pa.list_(pa.string())),
            "metadata": [json.dumps({"doc": i}) for i in range(len(docs))],
        }
    )
    pq.write_table(table, path)
    return path


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def llava_entry(i: int, image: str | None, question: str = "what color is the square?", answer="red") -> dict:
    entry = {
        "id": str(i),
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}" if image else question},
            {"from": "gpt", "value": answer},
        ],
    }
    if image:
        entry["image"] = image
    return entry
