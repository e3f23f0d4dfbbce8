"""Ingest with its corpora and its run folder on an object store (the session's real S3 server): Ray tasks
read s3:// corpora and write the shards straight to the bucket; the driver's disk keeps no shard."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_workflow

from mm1 import storage
from mm1.data.ingest import run_ingest
from mm1.data.loader import build_train_dataset


def read_split(location: str) -> pa.Table:
    files = storage.list_files(location, suffix=".parquet")
    assert files, f"no shards under {location}"
    tables = []
    for f in files:
        fs, path = storage.filesystem(f)
        tables.append(pq.read_table(path, filesystem=fs))
    return pa.concat_tables(tables)


@pytest.fixture(scope="module")
def bucket_ingest(shapes_ingest, s3_server, tmp_path_factory):
    """The local ingest's corpora uploaded to a bucket, then ingested again from there into the bucket."""
    local_out, _ = shapes_ingest
    bucket = s3_server.new_bucket()
    s3_server.upload(local_out / "corpora", f"{bucket}/corpora")
    wf = small_workflow()
    c = wf.data.corpora
    c.captions, c.interleaved = [f"{bucket}/corpora/captions"], [f"{bucket}/corpora/interleaved/*.parquet"]
    c.text, c.sft = [f"{bucket}/corpora/text"], [f"{bucket}/corpora/sft/00000.json"]
    staging = tmp_path_factory.mktemp("driver-staging")
    out_uri = f"{bucket}/run/ingest"
    stats = run_ingest(wf.data, staging, out_uri, progress=False)
    return staging, out_uri, stats


def test_shards_in_the_bucket_equal_a_local_ingest(shapes_ingest, bucket_ingest):
    local_out, local_stats = shapes_ingest
    staging, out_uri, stats = bucket_ingest
    assert stats["records_kept"] == local_stats["records_kept"] and stats["records_dropped"] == 0
    for split in ("pretrain", "sft"):
        assert stats[split]["dir"] == f"{out_uri}/{split}"
        assert read_split(f"{out_uri}/{split}").equals(read_split(str(local_out / split)))
        assert not (staging / split).exists()  # written by the tasks to the bucket, not to the driver
    assert stats["tokenizer"]["path"] == f"{out_uri}/tokenizer"
    assert storage.is_file(f"{out_uri}/tokenizer/tokenizer.json")
    assert storage.list_dirs(out_uri) == [f"{out_uri}/{d}" for d in ("pretrain", "sft", "tokenizer")]


def test_training_rows_stream_from_the_bucket(bucket_ingest):
    _, out_uri, _ = bucket_ingest
    ds = build_train_dataset(
        f"{out_uri}/pretrain",
        tokenizer=f"{out_uri}/tokenizer",
        image_size=32,
        image_grid=1,
        image_tokens_per_image=4,
        seq_len=128,
        max_images=4,
        seed=0,
    )
    rows = ds.take(3)
    assert len(rows) == 3 and all(r["num_tokens"] > 0 for r in rows)
    assert rows[0]["images"].shape[1:] == (32, 32, 3)


def test_generated_shapes_go_straight_to_the_bucket(s3_bucket, tmp_path):
    wf = small_workflow()
    wf.data.shapes.caption_samples, wf.data.shapes.interleaved_docs = 20, 6
    wf.data.shapes.text_samples, wf.data.shapes.sft_samples = 10, 12
    out_uri = f"{s3_bucket}/run/ingest"
    stats = run_ingest(wf.data, tmp_path, out_uri, progress=False)
    assert stats["generated_shapes"] and stats["records_kept"] == 20 + 6 + 10 + 12
    assert storage.is_file(f"{out_uri}/corpora/captions/00000.tar")
    assert storage.list_files(f"{out_uri}/corpora/sft/images", recursive=True)  # SFT images beside the JSON
    assert not (tmp_path / "corpora").exists()
