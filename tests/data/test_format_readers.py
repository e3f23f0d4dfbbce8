"""Each reader on files in the real format, and each corrupt kind skipped and counted by reason."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import (
    NOT_AN_IMAGE,
    image_bytes,
    llava_entry,
    truncated_jpeg,
    write_jsonl,
    write_obelics,
    write_tar,
)
from PIL import Image

from mm1.data import records as R
from mm1.data.images import to_png
from mm1.data.readers import ReadOptions, load_file
from mm1.data.records import Bad, BadTally, Record


def run(source: str, path, options: ReadOptions | None = None) -> tuple[list[Record], Counter]:
    kept, bad = [], Counter()
    for item in load_file(source, str(path), options or ReadOptions()):
        if isinstance(item, Bad):
            bad[item.reason] += 1
        else:
            kept.append(item)
    return kept, bad


def is_rgb_png(data: bytes) -> bool:
    image = Image.open(io.BytesIO(data))
    return image.format == "PNG" and image.mode == "RGB"


# ------------------------------------------------------------------------------------------ webdataset


def test_webdataset_captions_and_corrupt_samples(tmp_path):
    jpg = image_bytes("JPEG")
    tar = write_tar(
        tmp_path / "00000.tar",
        [
            ("000.jpg", jpg),
            ("000.txt", b"a red square"),
            ("000.json", json.dumps({"caption": "ignored: txt wins", "width": 40}).encode()),
            ("001.png", image_bytes("PNG")),
            ("001.json", json.dumps({"caption": "from the json", "url": "http://x"}).encode()),
            ("002.jpg", truncated_jpeg()),
            ("002.txt", b"truncated"),
            ("003.jpg", NOT_AN_IMAGE),
            ("003.txt", b"not an image"),
            ("004.jpg", jpg),
            ("004.txt", b"   "),
            ("005.txt", b"no image at all"),
            ("006.jpg", jpg),
            ("006.json", b"{not json"),
        ],
    )
    kept, bad = run("captions", tar)
    assert [r.segments for r in kept] == [[None, "a red square"], [None, "from the json"]]
    assert all(len(r.images) == 1 and is_rgb_png(r.images[0]) for r in kept)
    assert bad == {
        R.TRUNCATED_IMAGE: 1,
        R.NOT_AN_IMAGE: 1,
        R.EMPTY_CAPTION: 1,
        R.MISSING_IMAGE: 1,
        R.BAD_JSON: 1,
    }


def test_a_truncated_tar_keeps_what_came_before(tmp_path):
    members = []
    for i in range(4):
        members += [(f"{i:03d}.jpg", image_bytes()), (f"{i:03d}.txt", f"caption {i}".encode())]
    tar = write_tar(tmp_path / "a.tar", members)
    with tarfile.open(tar) as t:
        cut = t.getmember("002.jpg").offset_data + 10  # inside the third sample's image
    tar.write_bytes(tar.read_bytes()[:cut])
    kept, bad = run("captions", tar)
    assert [r.segments[1] for r in kept] == ["caption 0", "caption 1"]
    assert bad == {R.UNREADABLE_FILE: 1}


# ------------------------------------------------------------------------------------------ OBELICS


def test_obelics_parquet_with_bytes(tmp_path):
    png = image_bytes("PNG")
    path = write_obelics(
        tmp_path / "docs.parquet",
        [
            ([png, None, png], [None, "between two images", None]),
            ([None, image_bytes("JPEG")], ["text first", None]),
            ([png, None], [None]),  # unequal lengths
            ([png, None], [None, None]),  # index 1 has neither
            ([png, None], ["both", "x"]),  # index 0 has both
            ([truncated_jpeg(), None], [None, "broken image"]),
            ([NOT_AN_IMAGE, None], [None, "not an image"]),
        ],
    )
    kept, bad = run("interleaved", path)
    assert [r.segments for r in kept] == [[None, "between two images", None], ["text first", None]]
    assert [len(r.images) for r in kept] == [2, 1]
    assert all(is_rgb_png(i) for r in kept for i in r.images)
    assert bad == {R.UNEQUAL_LISTS: 1, R.BAD_INTERLEAVING: 2, R.TRUNCATED_IMAGE: 1, R.NOT_AN_IMAGE: 1}


def test_obelics_parquet_with_paths_and_urls(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(image_bytes("PNG"))
    absolute = tmp_path / "img" / "b.jpg"
    absolute.write_bytes(image_bytes("JPEG"))
    path = write_obelics(
        tmp_path / "docs.parquet",
        [
            (["img/a.png", None, str(absolute)], [None, "relative then absolute", None]),
            (["https://example.com/x.jpg", None], [None, "the url is skipped"]),
            (["img/missing.png", None], [None, "missing file"]),
            (["http://example.com/only.jpg"], [None]),
        ],
        image_type=pa.string(),
    )
    kept, bad = run("interleaved", path)
    assert [r.segments for r in kept] == [[None, "relative then absolute", None], ["the url is skipped"]]
    assert [r.urls_skipped for r in kept] == [0, 1]
    assert bad == {R.MISSING_IMAGE_FILE: 1, R.EMPTY_TEXT: 1}  # the url-only doc has nothing left


def test_obelics_hf_image_structs(tmp_path):
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    path = write_obelics(
        tmp_path / "hf.parquet",
        [([{"bytes": image_bytes("PNG"), "path": None}, None], [None, "hf image feature"])],
        image_type=struct,
    )
    kept, bad = run("interleaved", path)
    assert len(kept) == 1 and not bad


def test_a_file_that_is_not_parquet_counts_once(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 but not really")
    kept, bad = run("interleaved", path)
    assert kept == [] and bad == {R.UNREADABLE_FILE: 1}


# ------------------------------------------------------------------------------------------ text-only


def test_jsonl_text_with_a_bad_line(tmp_path):
    path = write_jsonl(
        tmp_path / "text.jsonl",
        [
            json.dumps({"text": "a triangle has three sides"}),
            "{this is not json",
            json.dumps({"text": ""}),
            json.dumps({"content": "wrong field"}),
            "",
            json.dumps({"text": "two and one make three", "meta": 1}),
        ],
    )
    kept, bad = run("text", path)
    assert [r.segments for r in kept] == [["a triangle has three sides"], ["two and one make three"]]
    assert bad == {R.BAD_JSON: 1, R.EMPTY_TEXT: 2}


def test_parquet_text_column(tmp_path):
    path = tmp_path / "text.parquet"
    pq.write_table(pa.table({"text": ["one", None, "two"], "id": [1, 2, 3]}), path)
    kept, bad = run("text", path)
    assert [r.text() for r in kept] == ["one", "two"] and bad == {R.EMPTY_TEXT: 1}


# ------------------------------------------------------------------------------------------ LLaVA


def test_llava_json(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "images" / "bad.jpg").write_bytes(truncated_jpeg())
    no_marker = llava_entry(2, "images/0.png")
    no_marker["conversations"][0]["value"] = "what is it?"
    entries = [
        llava_entry(0, "images/0.png"),
        llava_entry(1, None, question="what is two and one?", answer="three"),  # text-only SFT
        no_marker,
        llava_entry(3, "images/missing.png"),
        llava_entry(4, "images/bad.jpg"),
        {"id": "5", "image": "images/0.png"},  # no conversations
        {"id": "6", "conversations": [{"from": "robot", "value": "?"}]},
    ]
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(entries))
    kept, bad = run("sft", path)
    assert [len(r.images) for r in kept] == [1, 0, 1]
    assert kept[0].turns == [
        {"role": "user", "content": "<image>\nwhat color is the square?"},
        {"role": "assistant", "content": "red"},
    ]
    assert kept[2].turns[0]["content"] == "<image>\nwhat is it?"  # LLaVA convention: image first
    assert bad == {R.MISSING_IMAGE_FILE: 1, R.TRUNCATED_IMAGE: 1, R.BAD_RECORD: 2}


def test_llava_image_root_option(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "0.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "json").mkdir()
    path = tmp_path / "json" / "sft.json"
    path.write_text(json.dumps([llava_entry(0, "0.png")]))
    assert run("sft", path)[1] == {R.MISSING_IMAGE_FILE: 1}
    kept, bad = run("sft", path, ReadOptions(sft_image_root=str(tmp_path / "pics")))
    assert len(kept) == 1 and not bad


def test_a_bad_llava_file_counts_once(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text('[{"id": 1,')
    assert run("sft", path) == ([], Counter({R.BAD_JSON: 1}))


# ------------------------------------------------------------------------------------------ images


def test_png_passthrough_and_conversion():
    png = image_bytes("PNG")
    assert to_png(png) is png  # an RGB PNG is kept as is
    assert is_rgb_png(to_png(image_bytes("JPEG")))
    grey = io.BytesIO()
    Image.new("L", (8, 8), 128).save(grey, format="PNG")
    assert is_rgb_png(to_png(grey.getvalue()))  # other modes become RGB, at native size
    assert Image.open(io.BytesIO(to_png(grey.getvalue()))).size == (8, 8)


def test_bad_tally_names_the_worst_files():
    tally = BadTally()
    for _ in range(3):
        tally.add(R.TRUNCATED_IMAGE, "a.tar", "key 1")
    tally.add(R.BAD_JSON, "b.jsonl")
    tally.add(R.EMPTY_CAPTION, "a.tar")
    worst = tally.worst_files()
    assert worst[0] == {"file": "a.tar", "bad": 4, "reasons": {R.EMPTY_CAPTION: 1, R.TRUNCATED_IMAGE: 3}}
    assert tally.total == 5 and tally.to_dict()["by_reason"][R.TRUNCATED_IMAGE] == 3


@pytest.mark.parametrize("source", ["interleaved", "captions", "text", "sft"])
def test_missing_corpus_file_is_counted_not_fatal(tmp_path, source):
    ext = {"interleaved": "parquet", "captions": "tar", "text": "jsonl", "sft": "json"}[source]
    kept, bad = run(source, tmp_path / f"nope.{ext}")
    assert kept == [] and bad == {R.UNREADABLE_FILE: 1}


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server over tmp_path/www (download tests without the internet)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_images_download_when_enabled(tmp_path, http_server):
    root, base = http_server
    (root / "ok.jpg").write_bytes(image_bytes("JPEG"))
    (root / "page.html").write_bytes(NOT_AN_IMAGE)
    path = write_obelics(
        tmp_path / "urls.parquet",
        [([f"{base}/ok.jpg", None, f"{base}/gone.jpg", f"{base}/page.html"], [None, "text", None, None])],
        image_type=pa.string(),
    )
    kept, bad = run("interleaved", path, ReadOptions(download_images=True))
    assert not bad and len(kept) == 1
    assert kept[0].segments == [None, "text"] and is_rgb_png(kept[0].images[0])
    assert (
        kept[0].downloads_failed == 2 and kept[0].urls_skipped == 0
    )  # link rot drops the image, not the doc
    kept, _ = run("interleaved", path)
    assert kept[0].segments == ["text"] and kept[0].urls_skipped == 3
