"""The Shapes corpora in the real formats: structure of each file, round trip through the readers."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm1.config import ShapesConfig
from mm1.data import shapes
from mm1.data.readers import load_file
from mm1.data.records import Record
from mm1.data.shapes_cli import shapes_command
from mm1.data.shapes_corpus import write_shapes_corpora

CFG = ShapesConfig(caption_samples=30, interleaved_docs=12, text_samples=20, sft_samples=15, seed=3)
QUESTION_STARTS = (
    "how many ",
    "what color is the ",
    "what shape is the ",
    "is there ",
    "what word",
    "describe",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return out, write_shapes_corpora(out, CFG, parallel=False)


def test_webdataset_shards(corpus):
    _, paths = corpus
    with tarfile.open(paths["captions"][0]) as tar:
        names = tar.getnames()
        assert len(names) == 3 * CFG.caption_samples
        for i in range(0, len(names), 3):  # the files of a key are adjacent: jpg, txt, json
            key = names[i].split(".")[0]
            assert names[i : i + 3] == [f"{key}.jpg", f"{key}.txt", f"{key}.json"]
            image = Image.open(io.BytesIO(tar.extractfile(names[i]).read()))
            assert image.format == "JPEG" and image.size == (128, 128)
            text = tar.extractfile(names[i + 1]).read().decode()
            meta = json.loads(tar.extractfile(names[i + 2]).read())
            assert meta["caption"] == text and meta["key"] == key
            canonical = shapes.caption(shapes.Scene.from_dict(meta["scene"]))
            assert canonical == meta["canonical_caption"] and canonical in text


def test_obelics_documents(corpus):
    _, paths = corpus
    table = pq.read_table(paths["interleaved"][0])
    assert table.num_rows == CFG.interleaved_docs
    for row in table.to_pylist():
        images, texts = row["images"], row["texts"]
        assert len(images) == len(texts)
        assert all((i is None) != (t is None) for i, t in zip(images, texts, strict=True))
        n_images = sum(i is not None for i in images)
        assert 2 <= n_images <= 5 and len(images) == 2 * n_images  # one text before or after each scene
        for k in range(0, len(images), 2):  # each (scene, text) pair sits together, in either order
            assert (images[k] is None) != (images[k + 1] is None)
        assert all(Image.open(io.BytesIO(i)).size == (128, 128) for i in images if i)
        meta = json.loads(row["metadata"])
        assert len(meta) == len(images) and all(
            (m is None) == (i is None) for m, i in zip(meta, images, strict=True)
        )


def test_text_and_sft_files(corpus):
    out, paths = corpus
    lines = Path(paths["text"][0]).read_text().splitlines()
    assert len(lines) == CFG.text_samples and all(json.loads(line)["text"] for line in lines)
    entries = json.loads(Path(paths["sft"][0]).read_text())
    assert len(entries) == CFG.sft_samples
    for entry in entries:
        assert (Path(paths["sft"][0]).parent / entry["image"]).is_file()  # relative to the JSON
        turns = entry["conversations"]
        assert 2 <= len(turns) <= 6 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        questions = [t["value"].removeprefix("<image>\n") for t in turns[::2]]
        assert len(set(questions)) == len(questions)
        assert all(q.startswith(QUESTION_STARTS) for q in questions)


def test_round_trip_through_the_readers(corpus):
    _, paths = corpus
    counts: Counter = Counter()
    for source, files in paths.items():
        for path in files:
            for item in load_file(source, str(path)):
                assert isinstance(item, Record), item
                counts[source] += 1
    assert counts == {"captions": 30, "interleaved": 12, "text": 20, "sft": 15}


def test_same_seed_same_bytes_and_reuse(tmp_path, corpus):
    _, first = corpus
    again = write_shapes_corpora(tmp_path / "again", CFG, parallel=False)
    for source in first:
        for a, b in zip(first[source], again[source], strict=True):
            assert Path(a).read_bytes() == Path(b).read_bytes()
    mtime = Path(again["captions"][0]).stat().st_mtime_ns
    write_shapes_corpora(tmp_path / "again", CFG, parallel=False)  # same config: reused, not rewritten
    assert Path(again["captions"][0]).stat().st_mtime_ns == mtime


def test_shapes_command_scales_the_defaults(tmp_path, capsys):
    result = shapes_command(str(tmp_path), seed=1, scale=0.01)
    assert len(json.loads(Path(result["sft"][0]).read_text())) == 20  # 2000 x 0.01
    assert "captions" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown"):
        shapes_command(str(tmp_path), colours=3)


def test_sft_turns_follow_the_configured_range(tmp_path):
    cfg = ShapesConfig(caption_samples=1, interleaved_docs=1, text_samples=1, sft_samples=40, seed=5)
    cfg.sft_min_turns, cfg.sft_max_turns = 5, 7
    paths = write_shapes_corpora(tmp_path, cfg, parallel=False)
    entries = json.loads(Path(paths["sft"][0]).read_text())
    answered = [len(e["conversations"]) // 2 for e in entries]
    # A scene has 5 to 7 questions, so a draw above the table's size takes the whole table.
    assert min(answered) >= 5 and max(answered) <= 7 and len(set(answered)) > 1


def test_sft_turns_can_draw_from_every_question(tmp_path):
    cfg = ShapesConfig(caption_samples=1, interleaved_docs=1, text_samples=1, sft_samples=40, seed=5)
    cfg.sft_min_turns, cfg.sft_max_turns, cfg.sft_questions = 8, 12, "every"
    entries = json.loads(Path(write_shapes_corpora(tmp_path, cfg, parallel=False)["sft"][0]).read_text())
    answered = [len(e["conversations"]) // 2 for e in entries]
    assert max(answered) > 7  # more than the per-type table could give
    questions = [t["value"].removeprefix("<image>\n") for e in entries for t in e["conversations"][::2]]
    per_entry = [[t["value"] for t in e["conversations"][::2]] for e in entries]
    assert all(len(set(q)) == len(q) for q in per_entry)  # no question twice in one conversation
    assert all(q.startswith(QUESTION_STARTS) for q in questions)


def _asked_types(entries: list[dict]) -> Counter:
    starts = {"what color": "colour_of", "what shape": "shape_of", "how many shapes": "count_all"}
    counts: Counter = Counter()
    for entry in entries:
        for turn in entry["conversations"][::2]:
            question = turn["value"].removeprefix("<image>\n")
            counts[next((t for s, t in starts.items() if question.startswith(s)), question.split()[0])] += 1
    return counts


def test_sft_type_weights_shift_what_the_turns_ask(tmp_path):
    cfg = ShapesConfig(caption_samples=1, interleaved_docs=1, text_samples=1, sft_samples=300, seed=5)
    cfg.sft_min_turns, cfg.sft_max_turns, cfg.sft_questions = 4, 7, "every"
    plain = _asked_types(
        json.loads(Path(write_shapes_corpora(tmp_path / "a", cfg, parallel=False)["sft"][0]).read_text())
    )
    cfg.sft_type_weights = {"colour_of": 6, "caption": 0}
    weighted = _asked_types(
        json.loads(Path(write_shapes_corpora(tmp_path / "b", cfg, parallel=False)["sft"][0]).read_text())
    )
    assert weighted["describe"] == 0 < plain["describe"]  # weight 0: never asked
    share = lambda counts: counts["colour_of"] / sum(counts.values())  # noqa: E731
    assert share(weighted) > 1.5 * share(plain)  # the pool holds ~1 colour question per 4 count/exists ones
