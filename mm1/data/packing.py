"""Sequence packing: tokenized samples (one `<image>` token per image) -> fixed-length training rows.

Per sample, in shard order:
- each `<image>` token becomes `image_tokens` copies (the candidate's tokens per image, crops included);
- a sample longer than `seq_len`, or with more than `max_images` images, is TRUNCATED (not split): it keeps
  its first `seq_len` tokens, but never cuts through an image's token run; the cut moves back to just
  before that image, and the image is dropped. The tail is lost (pre-training documents and SFT
  conversations are short next to seq_len; splitting would orphan answers from their questions).
Samples are packed greedily (first-fit over a few open rows): a sample joins the first open row that still
has room for its tokens (`seq_len`) and images (`max_images`). Each sample lands in exactly one row, whole.

Row layout (what the model sees; see also mm1.model.packing):
- `input_ids` [seq_len]: the samples back to back, then `pad_id` up to seq_len.
- `labels` [seq_len]: the samples' labels (-100 on images, prompts and <s>), -100 on padding. Each sample
  starts with <s> whose label is -100, so no loss crosses a document boundary.
- `position_ids` [seq_len]: 0, 1, 2, ... restarting at 0 at every document. The model derives
  document-isolated (block-diagonal causal) attention from them: a new document starts wherever the
  position does not step by +1. Padding forms one last pseudo-document 0, 1, 2, ... (masked out by
  `attention_mask`, and never attended to by real tokens).
- `num_tokens`: real tokens (the attention mask is `arange(seq_len) < num_tokens`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from mm1.data.chat import IGNORE_INDEX


@dataclass(frozen=True)
class PackSpec:
    seq_len: int
    max_images: int
    image_tokens: int  # tokens per image in the model (crops x connector tokens)
    image_token_id: int
    pad_id: int

    def check(self) -> None:
        if self.image_tokens < 1:
            raise ValueError(f"image_tokens_per_image must be >= 1, got {self.image_tokens}")
        if self.seq_len < self.image_tokens + 2:
            raise ValueError(
                f"seq_len={self.seq_len} cannot hold one image of {self.image_tokens} tokens plus <s> and a "
                "token of text: raise packing.seq_len or lower the connector's tokens / image_grid"
            )
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {self.max_images}")


@dataclass
class Sample:
    """One expanded (and possibly truncated) sample."""

    input_ids: np.ndarray
    labels: np.ndarray
    images: list  # the sample's images (PNG bytes) that survived truncation, in token order
    truncated: bool = False


@dataclass
class PackedRow:
    input_ids: np.ndarray  # int32 [seq_len]
    labels: np.ndarray  # int32 [seq_len]
    position_ids: np.ndarray  # int32 [seq_len]
    num_tokens: int
    images: list = field(default_factory=list)
    num_samples: int = 0


def expand(input_ids: np.ndarray, labels: np.ndarray, images: list, spec: PackSpec) -> Sample:
    """Expand image tokens to `spec.image_tokens` copies, then truncate (see the module docstring)."""
    ids = np.asarray(input_ids, dtype=np.int32)
    labs = np.asarray(labels, dtype=np.int32)
    is_image = ids == spec.image_token_id
    n_images = int(is_image.sum())
    if n_images != len(images):
        raise ValueError(f"a sample has {n_images} image tokens but {len(images)} images")
    repeats = np.where(is_image, spec.image_tokens, 1)
    ids, labs = np.repeat(ids, repeats), np.repeat(labs, repeats)
    labs[ids == spec.image_token_id] = IGNORE_INDEX  # never learn to predict image placeholders
    # The end of each image's run, and the cut: at seq_len, or before the first image that overflows.
    starts = np.flatnonzero(is_image) + np.arange(n_images) * (spec.image_tokens - 1)
    cut = min(len(ids), spec.seq_len)
    keep = n_images
    for k, start in enumerate(starts):
        if k >= spec.max_images or start + spec.image_tokens > cut:
            cut, keep = min(cut, int(start)), k
            break
    return Sample(ids[:cut], labs[:cut], list(images[:keep]), truncated=cut < len(ids))


def _row(samples: list[Sample], spec: PackSpec) -> PackedRow:
    n = sum(len(s.input_ids) for s in samples)
    pad = spec.seq_len - n
    ids = np.concatenate([s.input_ids for s in samples] + [np.full(pad, spec.pad_id, np.int32)])
    labels = np.concatenate([s.labels for s in samples] + [np.full(pad, IGNORE_INDEX, np.int32)])
    positions = np.concatenate(
        [np.arange(len(s.input_ids), dtype=np.int32) for s in samples] + [np.arange(pad, dtype=np.int32)]
    )
    images = [image for s in samples for image in s.images]
    return PackedRow(ids, labels, positions, n, images, len(samples))


def pack(samples: Iterable[Sample], spec: PackSpec, open_rows: int = 8) -> Iterator[PackedRow]:
    """Greedy first-fit packing, in order: each sample goes into the first open row with room for its
    tokens and images, else into a new row; at most `open_rows` rows stay open (the oldest is closed
    first), so memory is bounded and rows keep roughly the stream's order."""
    rows: list[tuple[list[Sample], list[int]]] = []  # (samples, [tokens, images])
    for sample in samples:
        size, count = len(sample.input_ids), len(sample.images)
        for members, used in rows:
            if used[0] + size <= spec.seq_len and used[1] + count <= spec.max_images:
                members.append(sample)
                used[0] += size
                used[1] += count
                break
        else:
            if len(rows) == open_rows:
                yield _row(rows.pop(0)[0], spec)
            rows.append(([sample], [size, count]))
    for members, _ in rows:
        yield _row(members, spec)
