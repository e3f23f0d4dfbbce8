"""build_train_dataset + collate_packed on the shards of a real (small) ingest run."""

from __future__ import annotations

import glob
import hashlib
import warnings
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mm1.data.chat import IGNORE_INDEX
from mm1.data.loader import build_train_dataset, collate_packed, pack_spec
from mm1.data.packing import expand
from mm1.data.preprocess import CLIP_MEAN, CLIP_STD, split_image, to_pixel_values

SEQ_LEN, MAX_IMAGES, TOKENS = 128, 3, 6


def rows_of(ds) -> list[dict]:
    out = []
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        for i in range(len(batch["num_tokens"])):
            out.append({k: v[i] for k, v in batch.items()})
    return out


def digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def expected_documents(shard_dir: str, spec, size: int, grid: int) -> Counter:
    """Each shard sample, expanded/truncated on its own, with the digests of its resized crops."""
    table = pa.concat_tables(pq.read_table(f) for f in sorted(glob.glob(f"{shard_dir}/*.parquet")))
    docs: Counter = Counter()
    for row in table.to_pylist():
        s = expand(np.array(row["input_ids"]), np.array(row["labels"]), row["images"], spec)
        crops = tuple(digest(c) for png in s.images for c in split_image(png, size, grid))
        docs[(tuple(s.input_ids.tolist()), tuple(s.labels.tolist()), crops)] += 1
    return docs


def recovered_documents(rows: list[dict], spec, crops_per_image: int) -> Counter:
    docs: Counter = Counter()
    for row in rows:
        n, ids, labels, pos = int(row["num_tokens"]), row["input_ids"], row["labels"], row["position_ids"]
        starts = [i for i in range(n) if pos[i] == 0]
        images = iter(np.asarray(row["images"]))
        for start, end in zip(starts, starts[1:] + [n], strict=True):
            n_images = int((ids[start:end] == spec.image_token_id).sum()) // spec.image_tokens
            crops = tuple(digest(next(images)) for _ in range(n_images * crops_per_image))
            docs[(tuple(ids[start:end].tolist()), tuple(labels[start:end].tolist()), crops)] += 1
    return docs


@pytest.mark.parametrize("split", ["pretrain", "sft"])
def test_packed_rows_and_every_sample_once(shapes_ingest, split):
    out, _ = shapes_ingest
    shard_dir = str(out / split)
    spec = pack_spec(shard_dir, image_tokens_per_image=TOKENS, seq_len=SEQ_LEN, max_images=MAX_IMAGES)
    ds = build_train_dataset(
        shard_dir,
        image_size=32,
        image_grid=1,
        image_tokens_per_image=TOKENS,
        seq_len=SEQ_LEN,
        max_images=MAX_IMAGES,
        seed=0,
    )
    rows = rows_of(ds)
    for row in rows:
        n, ids, labels, pos = int(row["num_tokens"]), row["input_ids"], row["labels"], row["position_ids"]
        assert ids.shape == labels.shape == pos.shape == (SEQ_LEN,) and 0 < n <= SEQ_LEN
        assert int(row["num_images"]) <= MAX_IMAGES
        images = np.asarray(row["images"])
        assert images.shape == (int(row["num_images"]), 32, 32, 3) and images.dtype == np.uint8
        is_image = ids == spec.image_token_id
        assert is_image.sum() == int(row["num_images"]) * TOKENS
        assert (labels[is_image] == IGNORE_INDEX).all()
        assert (ids[n:] == spec.pad_id).all() and (labels[n:] == IGNORE_INDEX).all()
        assert pos[0] == 0 and (pos[n:] == np.arange(SEQ_LEN - n)).all()
        starts = np.flatnonzero(pos[:n] == 0)
        assert len(starts) == int(row["num_samples"])
        for a, b in zip(starts, list(starts[1:]) + [n], strict=True):
            assert (pos[a:b] == np.arange(b - a)).all()  # positions restart at each document
    samples = pq.ParquetDataset(shard_dir).read().num_rows
    assert sum(int(r["num_samples"]) for r in rows) == samples
    # every shard sample appears exactly once, with its own images, resized by mm1.data.preprocess
    assert recovered_documents(rows, spec, 1) == expected_documents(shard_dir, spec, 32, 1)


def test_image_splitting_and_the_same_rows_each_epoch(shapes_ingest):
    out, _ = shapes_ingest
    shard_dir = str(out / "sft")
    tokens = 5 * 2  # 2x2 crops + overview, 2 tokens each
    spec = pack_spec(shard_dir, image_tokens_per_image=tokens, seq_len=SEQ_LEN, max_images=MAX_IMAGES)
    ds = build_train_dataset(
        shard_dir,
        image_size=16,
        image_grid=2,
        image_tokens_per_image=tokens,
        seq_len=SEQ_LEN,
        max_images=MAX_IMAGES,
        seed=3,
    )
    first, second = rows_of(ds), rows_of(ds)
    for row in first:
        assert np.asarray(row["images"]).shape == (int(row["num_images"]) * 5, 16, 16, 3)
    assert recovered_documents(first, spec, 5) == expected_documents(shard_dir, spec, 16, 2)
    assert sorted(digest(r["input_ids"]) for r in first) == sorted(digest(r["input_ids"]) for r in second)


def test_collate_gives_model_tensors(shapes_ingest):
    out, _ = shapes_ingest
    ds = build_train_dataset(
        str(out / "pretrain"),
        image_size=32,
        image_grid=1,
        image_tokens_per_image=TOKENS,
        seq_len=SEQ_LEN,
        max_images=MAX_IMAGES,
        seed=0,
    )
    spec = pack_spec(
        str(out / "pretrain"), image_tokens_per_image=TOKENS, seq_len=SEQ_LEN, max_images=MAX_IMAGES
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # a NumpyBatchCollateFn: no deprecated path
        batches = list(ds.iter_torch_batches(batch_size=8, collate_fn=collate_packed))
    rows = rows_of(ds)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(rows)
    for batch in batches:
        assert set(batch) == {"input_ids", "labels", "position_ids", "attention_mask", "pixel_values"}
        b, length = batch["input_ids"].shape
        assert length == SEQ_LEN
        for key in ("input_ids", "labels", "position_ids", "attention_mask"):
            assert batch[key].dtype == torch.long and batch[key].shape == (b, length)
        assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape[1:] == (3, 32, 32)
        assert (
            int((batch["input_ids"] == spec.image_token_id).sum()) == batch["pixel_values"].shape[0] * TOKENS
        )
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    # images in row-major order, normalized by the shared to_pixel_values
    numpy_batch = next(iter(ds.iter_batches(batch_size=4, batch_format="numpy")))
    tensors = collate_packed(numpy_batch)
    images = np.concatenate([np.asarray(x) for x in numpy_batch["images"]])
    assert torch.equal(tensors["pixel_values"], to_pixel_values(images, CLIP_MEAN, CLIP_STD))
    mask = tensors["attention_mask"]
    assert (mask.sum(1) == torch.from_numpy(numpy_batch["num_tokens"].astype(np.int64))).all()


def test_collate_handles_rows_without_images():
    batch = {
        "input_ids": np.ones((2, 8), np.int32),
        "labels": np.full((2, 8), -100, np.int32),
        "position_ids": np.tile(np.arange(8, dtype=np.int32), (2, 1)),
        "num_tokens": np.array([8, 5], np.int32),
        "images": np.zeros((2, 0, 16, 16, 3), np.uint8),
    }
    out = collate_packed(batch)
    assert out["pixel_values"].shape == (0, 3, 16, 16)
    assert out["attention_mask"].tolist()[1] == [1] * 5 + [0] * 3


def test_loader_errors_are_loud(shapes_ingest, tmp_path):
    out, _ = shapes_ingest
    with pytest.raises(ValueError, match="seq_len"):
        build_train_dataset(
            str(out / "pretrain"),
            image_size=32,
            image_grid=1,
            image_tokens_per_image=200,
            seq_len=SEQ_LEN,
            max_images=2,
            seed=0,
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="ingest"):
        build_train_dataset(
            str(tmp_path / "empty"),
            image_size=32,
            image_grid=1,
            image_tokens_per_image=4,
            seq_len=SEQ_LEN,
            max_images=2,
            seed=0,
        )


def test_rows_leave_in_the_seeded_row_group_order_not_in_finishing_order(shapes_ingest, tmp_path):
    """A row group 40 times the size of the others is packed last of all; when the seed puts it first, the
    training stream (materialized, as a stage holds it) still starts with its rows, every time."""
    out, _ = shapes_ingest
    source = pq.read_table(glob.glob(str(out / "pretrain" / "*.parquet"))[0])
    shards = tmp_path / "ingest" / "pretrain"
    shards.mkdir(parents=True)
    (tmp_path / "ingest" / "tokenizer").symlink_to(out / "tokenizer")
    small = 8
    pq.write_table(pa.concat_tables([source.slice(0, small)] * 40), shards / "part-0.parquet")
    for i in range(1, 7):
        pq.write_table(source.slice(i * small, small), shards / f"part-{i}.parquet")
    # The seed whose permutation of the 7 row groups (one per file, files in name order) starts with the big one.
    seed = next(s for s in range(1000) if np.random.default_rng(s).permutation(7)[0] == 0)

    def stream(folder) -> list[str]:
        ds = build_train_dataset(
            str(folder),
            image_size=32,
            image_grid=1,
            image_tokens_per_image=TOKENS,
            seq_len=SEQ_LEN,
            max_images=MAX_IMAGES,
            seed=seed,
        ).materialize()
        return [digest(r["input_ids"]) for r in rows_of(ds)]

    rows = stream(shards)
    big_only = tmp_path / "big" / "pretrain"
    big_only.mkdir(parents=True)
    (tmp_path / "big" / "tokenizer").symlink_to(out / "tokenizer")
    (big_only / "part-0.parquet").symlink_to(shards / "part-0.parquet")
    big_rows = stream(big_only)
    assert len(rows) > len(big_rows) > 10
    assert rows[: len(big_rows)] == big_rows
    assert stream(shards) == rows
