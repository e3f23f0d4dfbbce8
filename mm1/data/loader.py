"""The training data of one candidate: ingest shards -> packed, model-ready rows (a Ray Dataset) -> tensors.

`build_train_dataset` is called per candidate (resolution, image grid and image tokens differ), reads the
model-independent shards written by ingest, and yields PACKED rows (see mm1.data.packing for the layout and
the truncation rule):
    input_ids, labels, position_ids      int32 [seq_len]  (positions restart at 0 at each document)
    num_tokens, num_images, num_samples  int32  (real tokens; images, not crops; documents in the row)
    images                               uint8 [num_images * crops, image_size, image_size, 3]
with crops = mm1.data.preprocess.crops_per_image(image_grid) (row-major crops, then the overview:
mm1.data.preprocess.split_image). `collate_packed` turns a batch of rows into the model's tensors. Call it on the
thread that trains, on numpy batches (`iter_batches(batch_format="numpy")`, as mm1.train.data_position
does): as an `iter_torch_batches` collate_fn it runs on Ray's prefetch thread, where its torch ops slow the
training step down on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.collate_fn import NumpyBatchCollateFn

from mm1 import storage
from mm1.data.packing import PackSpec, expand, pack
from mm1.data.preprocess import CLIP_MEAN, CLIP_STD, crops_per_image, split_image

PACK_WINDOW = 256  # samples packed per chunk; larger = fewer half-empty rows at chunk ends
MIN_ROW_FILL = 0.7  # packed rows are at least this full in practice (size estimates only)


def _list_column(table: pa.Table, name: str) -> list[np.ndarray]:
    """A list<int32> column as numpy slices of one flat buffer (no per-element Python objects)."""
    column = table.column(name).combine_chunks()
    values = column.values.to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(column))]


def pack_table(
    table: pa.Table, spec: PackSpec, image_size: int, image_grid: int, image_layouts: tuple | None = None
) -> dict[str, np.ndarray]:
    """Shard rows (source, input_ids, labels, images) -> packed rows with decoded, resized images (split in
    the layout of `image_layouts` that fits each image, as the model's processor splits them)."""
    ids, labels = _list_column(table, "input_ids"), _list_column(table, "labels")
    images = table.column("images").to_pylist()
    samples = (expand(i, lab, im, spec) for i, lab, im in zip(ids, labels, images, strict=True))
    rows = list(pack(samples, spec))
    crops = crops_per_image(image_grid)
    pixels = np.empty(len(rows), dtype=object)
    for r, row in enumerate(rows):
        decoded = [
            crop for png in row.images for crop in split_image(png, image_size, image_grid, image_layouts)
        ]
        pixels[r] = np.stack(decoded) if decoded else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
        assert len(decoded) == len(row.images) * crops
    return {
        "input_ids": np.stack([r.input_ids for r in rows]),
        "labels": np.stack([r.labels for r in rows]),
        "position_ids": np.stack([r.position_ids for r in rows]),
        "num_tokens": np.array([r.num_tokens for r in rows], dtype=np.int32),
        "num_images": np.array([len(r.images) for r in rows], dtype=np.int32),
        "num_samples": np.array([r.num_samples for r in rows], dtype=np.int32),
        "images": pixels,
    }


def pack_spec(
    shard_dir: str,
    *,
    image_tokens_per_image: int,
    seq_len: int,
    max_images: int,
    tokenizer: str | None = None,
) -> PackSpec:
    """Token ids from the tokenizer folder `tokenizer` (by default the one ingest saved beside the shards,
    shard_dir/../tokenizer); any mm1.storage location."""
    from transformers import AutoTokenizer

    from mm1.data.chat import IMAGE

    location = tokenizer or storage.join(storage.parent(shard_dir), "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(storage.local_copy(location))
    spec = PackSpec(
        seq_len=seq_len,
        max_images=max_images,
        image_tokens=image_tokens_per_image,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        pad_id=tokenizer.pad_token_id,
    )
    spec.check()
    return spec


def shard_files(shard_dir: str) -> list[str]:
    found = storage.list_files(shard_dir, suffix=".parquet")
    if not found:
        raise FileNotFoundError(
            f"no *.parquet shards in {shard_dir}: run the ingest step first, with corpora for this stage "
            "(SFT shards need an SFT corpus)"
        )
    return found


def _read_and_pack(
    batch: pa.Table, spec: PackSpec, image_size: int, image_grid: int, image_layouts: tuple | None
) -> Iterator[dict[str, np.ndarray]]:
    """One parquet row group per call: read it, pack its samples, decode their images."""
    for path, group in zip(
        batch.column("path").to_pylist(), batch.column("row_group").to_pylist(), strict=True
    ):
        with storage.open_input(path) as f:
            table = pq.ParquetFile(f).read_row_group(group, columns=["input_ids", "labels", "images"])
        for start in range(0, table.num_rows, PACK_WINDOW):
            yield pack_table(table.slice(start, PACK_WINDOW), spec, image_size, image_grid, image_layouts)


def row_groups(paths: list[str]) -> list[dict]:
    """(path, row group) work items: small enough to balance two cores, big enough to amortize a task."""
    items = []
    for path in paths:
        with storage.open_input(path) as f:
            groups = pq.ParquetFile(f).metadata.num_row_groups
        items += [{"path": path, "row_group": g} for g in range(groups)]
    return items


def build_train_dataset(
    shard_dir: str,
    *,
    tokenizer: str | None = None,
    image_size: int,
    image_grid: int,
    image_tokens_per_image: int,
    seq_len: int,
    max_images: int,
    seed: int,
    image_layouts: tuple | None = None,
) -> ray.data.Dataset:
    """Packed training rows for one candidate (one pass = one epoch: every sample lands in exactly one row).

    One Ray task per parquet row group (in a seeded order) reads, packs, decodes, resizes and splits: a
    single fused stage, no pandas, numpy batches. Packing never crosses a row group, so the same seed gives
    the same rows every epoch, and in the same order (`preserve_order`); shuffle rows in the trainer (e.g. a
    seeded `local_shuffle_buffer_size`) if wanted.
    """
    paths = shard_files(shard_dir)
    spec = pack_spec(
        shard_dir,
        image_tokens_per_image=image_tokens_per_image,
        seq_len=seq_len,
        max_images=max_images,
        tokenizer=tokenizer,
    )
    items = row_groups(paths)
    order = np.random.default_rng(seed).permutation(len(items))
    tasks = ray.data.from_items([items[i] for i in order], override_num_blocks=len(items))
    ds = tasks.map_batches(
        _read_and_pack,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "spec": spec,
            "image_size": image_size,
            "image_grid": image_grid,
            "image_layouts": image_layouts,
        },
    )
    # Ray Data reserves part of the CPU budget per operator; with one map stage on a small node that left
    # one task running at a time (measured on 2 CPUs). This dataset's own context only: use every CPU.
    ds.context.op_resource_reservation_enabled = False
    # Rows leave in the seeded row-group order, not in the order tasks happen to finish: a stage sees the
    # same rows in the same order on every run (runs compare like for like, a resume skips exactly the rows
    # it trained on), and a materialized dataset keeps that order for every pass.
    ds.context.execution_options.preserve_order = True
    return ds


def packed_bytes_estimate(tokens: int, images: int, *, seq_len: int, image_size: int, crops: int) -> int:
    """An upper bound of the bytes a stage's packed rows take: the token columns of rows at least
    MIN_ROW_FILL full, and `images` decoded at `image_size` (pass the ingest's total if the stage's own
    count is unknown)."""
    rows = int(np.ceil(tokens / (MIN_ROW_FILL * seq_len)))
    return rows * seq_len * 3 * 4 + images * crops * image_size * image_size * 3


class PackedCollate(NumpyBatchCollateFn):
    """Packed rows -> model inputs: input_ids/labels/position_ids/attention_mask [B, L] long, and
    pixel_values [N, 3, H, W] float (normalized by mm1.data.preprocess.to_pixel_values with the model's
    image_mean/std, i.e. its vision tower's: build it with `PackedCollate.for_processor(processor)`), the
    images of all rows in row-major order. A NumpyBatchCollateFn, so Ray hands it numpy batches without
    warnings."""

    def __init__(self, image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD):
        super().__init__()
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)

    @classmethod
    def for_processor(cls, processor) -> PackedCollate:
        """The collate whose pixels match what `processor` (an MM1Processor) gives evaluation and serving."""
        return cls(processor.image_mean, processor.image_std)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        from mm1.data.preprocess import to_pixel_values

        input_ids = torch.from_numpy(np.asarray(batch["input_ids"], dtype=np.int64))
        num_tokens = torch.from_numpy(np.asarray(batch["num_tokens"], dtype=np.int64))
        images = batch["images"]
        if images.dtype == object:  # ragged: one [n_i, H, W, 3] array per row
            stacked = np.concatenate([np.asarray(x) for x in images])
        else:  # every row had the same number of images: Ray gives one [B, n, H, W, 3] array
            stacked = images.reshape(-1, *images.shape[2:])
            if not stacked.flags.writeable:  # zero-copy from the object store; torch wants to own it
                stacked = stacked.copy()
        pixel_values = (
            to_pixel_values(stacked, self.image_mean, self.image_std)
            if len(stacked)
            else torch.zeros(0, 3, stacked.shape[1], stacked.shape[2], dtype=torch.float32)
        )
        return {
            "input_ids": input_ids,
            "labels": torch.from_numpy(np.asarray(batch["labels"], dtype=np.int64)),
            "position_ids": torch.from_numpy(np.asarray(batch["position_ids"], dtype=np.int64)),
            "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < num_tokens[:, None]).long(),
            "pixel_values": pixel_values,
        }


# `collate_packed(batch)`: CLIP's constants, the default of a randomly initialized tower. A model whose tower
# has its own statistics uses `PackedCollate.for_processor(processor)` (as mm1.train.loop does).
collate_packed = PackedCollate()
