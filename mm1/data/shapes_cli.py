"""`mm1 data shapes --out DIR [--seed N] [--scale X]`: write the Shapes corpora in the real formats."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from mm1.config import ShapesConfig
from mm1.data.shapes_corpus import write_shapes_corpora

SIZE_FIELDS = ("caption_samples", "interleaved_docs", "text_samples", "sft_samples")


def shapes_command(out_dir: str, *, scale: float = 1.0, **sizes: int | None) -> dict[str, list[Path]]:
    """Sizes are ShapesConfig fields (None = default x `scale`); prints where each corpus went."""
    fields = asdict(ShapesConfig())
    unknown = set(sizes) - set(fields)
    if unknown:
        raise ValueError(f"unknown Shapes settings {sorted(unknown)}; expected some of {sorted(fields)}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    values = {k: max(1, round(fields[k] * scale)) for k in SIZE_FIELDS}
    values.update({k: v for k, v in sizes.items() if v is not None})
    cfg = ShapesConfig(**{**fields, **values})
    start = time.perf_counter()
    result = write_shapes_corpora(out_dir, cfg)
    for corpus, paths in result.items():
        print(f"{corpus:12s} {len(paths)} file(s) under {Path(out_dir) / corpus}")
    print(f"Shapes corpora ({cfg}) written to {out_dir} in {time.perf_counter() - start:.1f}s")
    return result
