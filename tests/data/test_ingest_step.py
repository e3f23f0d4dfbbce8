"""The ingest step on Ray Data: Shapes generation, shards, tokenizer, stats, corrupt corpora."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_workflow
from data_helpers import NOT_AN_IMAGE, image_bytes, llava_entry, truncated_jpeg, write_jsonl, write_tar
from transformers import AutoTokenizer

from mm1.data import records as R
from mm1.data.chat import IMAGE, SPECIAL_TOKENS
from mm1.data.ingest import IngestError, run_ingest
from mm1.data.preprocess import load_image

SHARD_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("images", pa.list_(pa.binary())),
    ]
)


def read_split(folder) -> pa.Table:
    files = sorted(folder.glob("*.parquet"))
    assert files
    for f in files:
        assert pq.read_schema(f).remove_metadata() == SHARD_SCHEMA
    return pa.concat_tables(pq.read_table(f) for f in files)


def test_stats_of_the_generated_corpus(shapes_ingest):
    out, stats = shapes_ingest
    assert stats["generated_shapes"] and (out / "corpora" / "captions" / "00000.tar").is_file()
    assert stats["records_read"] == 120 + 40 + 60 + 80 == stats["records_kept"]
    assert stats["records_dropped"] == 0 and stats["dropped"]["by_reason"] == {}
    sources = stats["sources"]
    assert {s: v["kept"] for s, v in sources.items()} == {
        "captions": 120,
        "interleaved": 40,
        "text": 60,
        "sft": 80,
    }
    assert sources["captions"]["images"] == 120 and sources["sft"]["images"] == 80
    assert 80 <= sources["interleaved"]["images"] <= 200 and sources["text"]["images"] == 0
    assert stats["images"] == sum(v["images"] for v in sources.values())
    assert stats["tokens"] == sum(v["tokens"] for v in sources.values()) > 0
    mix = stats["mixture"]
    assert mix["total"] == stats["pretrain"]["samples"] == 220  # as many as the weighted sources hold
    for source, weight in mix["declared"].items():
        assert abs(mix["realized_samples"][source] - weight) <= 1 / mix["total"]
    assert json.loads((out / "stats.json").read_text())["mixture"]["samples"] == mix["samples"]


def test_shards_hold_tokenized_samples_with_png_images(shapes_ingest):
    out, stats = shapes_ingest
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert all(t in tokenizer.get_vocab() for t in SPECIAL_TOKENS)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    pretrain, sft = read_split(out / "pretrain"), read_split(out / "sft")
    assert pretrain.num_rows == 220 and sft.num_rows == 80
    assert Counter(pretrain.column("source").to_pylist()) == stats["mixture"]["samples"]
    assert set(sft.column("source").to_pylist()) == {"sft"}
    for table in (pretrain, sft):
        for row in table.slice(0, 60).to_pylist():
            ids, labels = np.array(row["input_ids"]), np.array(row["labels"])
            assert (ids == image_id).sum() == len(row["images"])  # ONE image token per image
            assert (labels[ids == image_id] == -100).all() and labels[0] == -100
            for png in row["images"]:
                image = load_image(png)
                assert image.format == "PNG" and image.size == (128, 128)  # native size, not resized
    caption = next(r for r in pretrain.to_pylist() if r["source"] == "captions")
    text = tokenizer.decode([i for i in caption["input_ids"] if i != image_id], skip_special_tokens=True)
    assert any(s in text for s in ("circle", "square", "triangle"))


def test_sft_labels_only_on_answers(shapes_ingest):
    out, _ = shapes_ingest
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    row = read_split(out / "sft").to_pylist()[0]
    answer = [t for t in row["labels"] if t != -100]
    decoded = tokenizer.decode(answer)
    assert decoded.count("<|end|>") >= 1 and "<|user|>" not in decoded and "<image>" not in decoded


def test_same_seed_same_shards(shapes_ingest, tmp_path):
    out, _ = shapes_ingest
    run_ingest(small_workflow().data, tmp_path, progress=False)
    for split in ("pretrain", "sft"):
        a, b = read_split(out / split), read_split(tmp_path / split)
        assert a.equals(b)


def write_named_corpora(root, bad_captions: int):
    """Real-format files with a few (or many) corrupt records among good ones."""
    members = []
    for i in range(20):
        members += [
            (f"{i:03d}.png", image_bytes("PNG", colour=(10 * i, 0, 0))),
            (f"{i:03d}.txt", f"cap {i}".encode()),
        ]
    for i in range(20, 20 + bad_captions):
        members += [(f"{i:03d}.jpg", truncated_jpeg() if i % 2 else NOT_AN_IMAGE), (f"{i:03d}.txt", b"x")]
    write_tar(root / "caps.tar", members)
    write_tar(root / "clean.tar", [("a.png", image_bytes("PNG")), ("a.txt", b"clean")])
    write_jsonl(root / "text.jsonl", [json.dumps({"text": f"line {i}"}) for i in range(20)] + ["{bad"])
    (root / "img.png").write_bytes(image_bytes("PNG"))
    entries = [llava_entry(i, "img.png") for i in range(10)] + [llava_entry(10, "missing.png")]
    (root / "sft.json").write_text(json.dumps(entries))


def named_workflow(root, max_bad: float):
    wf = small_workflow()
    wf.data.corpora.captions = [str(root / "*.tar")]
    wf.data.corpora.text = [str(root / "text.jsonl")]
    wf.data.corpora.sft = [str(root / "sft.json")]
    wf.data.mixture.interleaved = 0.45  # no interleaved corpus: its share goes to the others
    wf.data.max_bad_fraction = max_bad
    return wf


def test_named_corpora_with_a_few_corrupt_records(tmp_path):
    (tmp_path / "in").mkdir()
    write_named_corpora(tmp_path / "in", bad_captions=2)
    stats = run_ingest(named_workflow(tmp_path / "in", 0.1).data, tmp_path / "out", progress=False)
    assert not stats["generated_shapes"] and not (tmp_path / "out" / "corpora").exists()
    assert stats["records_read"] == 22 + 1 + 21 + 11
    assert stats["dropped"]["by_reason"] == {
        R.NOT_AN_IMAGE: 1,
        R.TRUNCATED_IMAGE: 1,
        R.BAD_JSON: 1,
        R.MISSING_IMAGE_FILE: 1,
    }
    assert stats["dropped"]["worst_files"][0]["file"].endswith("caps.tar")
    mix = stats["mixture"]
    assert mix["effective_weights"]["captions"] == pytest.approx(0.45 / 0.55)
    assert any("interleaved" in note for note in mix["notes"])
    assert stats["sft"]["samples"] == 10


def test_too_many_corrupt_records_fail_naming_the_worst_file(tmp_path):
    (tmp_path / "in").mkdir()
    write_named_corpora(tmp_path / "in", bad_captions=12)
    with pytest.raises(IngestError, match=r"caps\.tar \(12 bad: not_an_image 6, truncated_image 6\)"):
        run_ingest(named_workflow(tmp_path / "in", 0.05).data, tmp_path / "out", progress=False)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["records_dropped"] == 12 + 1 + 1 and "max_bad_fraction" in stats["error"]
