"""Readers for the real corpus formats (MM1.md), one generator per format, yielding `Record` or `Bad`.

Readers never raise on bad content: every malformed record becomes a `Bad` with a reason, and a shard that
cannot be opened at all becomes one `UNREADABLE_FILE`. `load_file` reads a file and verifies its images
(decode + RGB PNG), which is the unit of work one Ray Data task does at ingest.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from mm1 import storage
from mm1.data import files
from mm1.data.chat import IMAGE
from mm1.data.images import BadImage, to_png, verify_source
from mm1.data.records import (
    BAD_INTERLEAVING,
    BAD_JSON,
    BAD_RECORD,
    EMPTY_CAPTION,
    EMPTY_TEXT,
    MISSING_IMAGE,
    UNEQUAL_LISTS,
    UNREADABLE_FILE,
    Bad,
    Record,
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
EXTENSIONS = {
    "interleaved": (".parquet",),
    "captions": (".tar",),
    "text": (".jsonl", ".json", ".parquet"),
    "sft": (".json",),
}
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class ReadOptions:
    download_images: bool = False  # fetch http(s) image entries of interleaved documents
    sft_image_root: str = ""  # LLaVA `image` paths are relative to this (default: the JSON's folder)
    batch_rows: int = 256  # parquet rows read at a time


Item = Record | Bad


def read_file(source: str, path: str, options: ReadOptions = ReadOptions()) -> Iterator[Item]:
    reader = {
        "interleaved": read_obelics,
        "captions": read_webdataset,
        "text": read_text,
        "sft": read_llava,
    }[source]
    yield from reader(path, options)


def load_file(source: str, path: str, options: ReadOptions = ReadOptions()) -> Iterator[Item]:
    """Read `path` and verify every image of every record (a record with a corrupt image is Bad)."""
    for item in read_file(source, path, options):
        yield verify_record(item) if isinstance(item, Record) else item


def verify_record(record: Record) -> Record | Bad:
    try:
        record.images = [verify_source(src) for src in record.images]
    except BadImage as exc:
        return Bad(record.source, record.file, exc.reason, f"{record.key}: {exc}")
    return record


# --------------------------------------------------------------------------------------- interleaved


def read_obelics(path: str, options: ReadOptions = ReadOptions()) -> Iterator[Item]:
    """OBELICS-style parquet: `images` and `texts` equal-length lists, exactly one non-null per index."""
    try:
        with storage.open_input(path) as f:
            parquet = pq.ParquetFile(f)
            names = set(parquet.schema_arrow.names)
            if not {"images", "texts"} <= names:
                raise ValueError(f"needs `images` and `texts` columns, found {sorted(names)}")
            batches = parquet.iter_batches(batch_size=options.batch_rows, columns=["images", "texts"])
            index = 0
            for batch in batches:
                for row in batch.to_pylist():
                    yield _obelics_row(path, index, row["images"], row["texts"], options)
                    index += 1
    except Exception as exc:  # a broken shard is counted once; the rest of the corpus goes on
        yield Bad("interleaved", path, UNREADABLE_FILE, f"{type(exc).__name__}: {exc}")


def _obelics_row(path: str, index: int, images, texts, options: ReadOptions) -> Item:
    key = f"{path}#{index}"
    if not isinstance(images, list) or not isinstance(texts, list):
        return Bad("interleaved", path, BAD_RECORD, f"{key}: images/texts must be lists")
    if len(images) != len(texts):
        return Bad("interleaved", path, UNEQUAL_LISTS, f"{key}: {len(images)} images vs {len(texts)} texts")
    record = Record("interleaved", key, path, segments=[])
    for i, (image, text) in enumerate(zip(images, texts, strict=True)):
        if (image is None) == (text is None):
            return Bad("interleaved", path, BAD_INTERLEAVING, f"{key}: index {i} has both or neither")
        if text is not None:
            if not isinstance(text, str):
                return Bad("interleaved", path, BAD_RECORD, f"{key}: text {i} is {type(text).__name__}")
            record.segments.append(text)
            continue
        source = _image_entry(image)
        if source is None:
            return Bad("interleaved", path, BAD_RECORD, f"{key}: image {i} is {type(image).__name__}")
        if isinstance(source, str) and storage.is_http(source):
            fetched = _fetch(source, record) if options.download_images else None
            if not options.download_images:
                record.urls_skipped += 1
            if fetched is None:
                continue
            source = fetched
        elif isinstance(source, str):
            source = storage.join(storage.parent(path), source)
        record.segments.append(None)
        record.images.append(source)
    if not record.images and not any(s and s.strip() for s in record.segments):
        return Bad("interleaved", path, EMPTY_TEXT, f"{key}: no text and no usable image")
    return record


def _image_entry(image) -> bytes | str | None:
    """An OBELICS image entry: bytes, a path/URL string, or a {"bytes", "path"} struct (HF Image)."""
    if isinstance(image, (bytes, str)):
        return image
    if isinstance(image, dict):
        return image.get("bytes") or image.get("path")
    return None


def _fetch(url: str, record: Record) -> bytes | None:
    """Downloaded and verified bytes, or None (link rot is normal: the image is dropped, not the doc)."""
    try:
        return to_png(files.download(url))
    except (OSError, ValueError, BadImage):
        record.downloads_failed += 1
        return None


# --------------------------------------------------------------------------------------- captions


def read_webdataset(path: str, options: ReadOptions = ReadOptions()) -> Iterator[Item]:
    """Webdataset tar: per key, an image member (jpg/png/...) + `txt` caption and/or `json` with `caption`."""
    index = 0
    try:
        with storage.open_input(path) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            current, members = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                dirname, base = posixpath.split(member.name)
                stem, _, ext = base.partition(".")
                key = posixpath.join(dirname, stem)
                if key != current and current is not None:
                    yield _caption_sample(path, index, current, members)
                    index += 1
                    members = {}
                current = key
                members[ext.lower()] = tar.extractfile(member).read()  # type: ignore[union-attr]
            if current is not None:
                yield _caption_sample(path, index, current, members)
    except Exception as exc:  # truncated or not a tar: samples before the break are kept
        yield Bad("captions", path, UNREADABLE_FILE, f"{type(exc).__name__}: {exc}")


def _caption_sample(path: str, index: int, key: str, members: dict[str, bytes]) -> Item:
    rkey = f"{path}#{index}"
    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    if image is None:
        return Bad("captions", path, MISSING_IMAGE, f"{rkey} ({key}): no image member")
    caption = ""
    if "txt" in members:
        caption = members["txt"].decode("utf-8", errors="replace")
    elif "json" in members:
        try:
            meta = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return Bad("captions", path, BAD_JSON, f"{rkey} ({key}): json member does not parse")
        value = meta.get("caption") if isinstance(meta, dict) else None
        caption = value if isinstance(value, str) else ""
    caption = caption.strip()
    if not caption:
        return Bad("captions", path, EMPTY_CAPTION, f"{rkey} ({key})")
    return Record("captions", rkey, path, segments=[None, caption], images=[image])


# --------------------------------------------------------------------------------------- text-only


def read_text(path: str, options: ReadOptions = ReadOptions()) -> Iterator[Item]:
    """Text-only: JSON lines with a `text` field, or parquet with a `text` column."""
    if path.endswith(".parquet"):
        yield from _read_text_parquet(path, options)
        return
    try:
        with storage.open_input(path) as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except Exception as exc:
        yield Bad("text", path, UNREADABLE_FILE, f"{type(exc).__name__}: {exc}")
        return
    index = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Bad("text", path, BAD_JSON, f"{path}#{index}: {exc}")
        else:
            text = row.get("text") if isinstance(row, dict) else None
            yield _text_record(path, index, text)
        index += 1


def _read_text_parquet(path: str, options: ReadOptions) -> Iterator[Item]:
    try:
        with storage.open_input(path) as f:
            parquet = pq.ParquetFile(f)
            if "text" not in parquet.schema_arrow.names:
                raise ValueError(f"needs a `text` column, found {parquet.schema_arrow.names}")
            index = 0
            for batch in parquet.iter_batches(batch_size=options.batch_rows, columns=["text"]):
                for text in batch.column("text").to_pylist():
                    yield _text_record(path, index, text)
                    index += 1
    except Exception as exc:
        yield Bad("text", path, UNREADABLE_FILE, f"{type(exc).__name__}: {exc}")


def _text_record(path: str, index: int, text) -> Item:
    key = f"{path}#{index}"
    if not isinstance(text, str):
        return Bad("text", path, BAD_RECORD if text is not None else EMPTY_TEXT, f"{key}: no `text` string")
    if not text.strip():
        return Bad("text", path, EMPTY_TEXT, key)
    return Record("text", key, path, segments=[text])


# --------------------------------------------------------------------------------------- SFT


def read_llava(path: str, options: ReadOptions = ReadOptions()) -> Iterator[Item]:
    """LLaVA JSON: a list of {"id", "image" (relative path, optional), "conversations": [{from, value}]}."""
    try:
        entries = json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as exc:
        yield Bad("sft", path, BAD_JSON, f"{path}: {exc}")
        return
    except Exception as exc:
        yield Bad("sft", path, UNREADABLE_FILE, f"{type(exc).__name__}: {exc}")
        return
    if not isinstance(entries, list):
        yield Bad("sft", path, BAD_RECORD, f"{path}: top level must be a list of conversations")
        return
    root = options.sft_image_root or storage.parent(path)
    for index, entry in enumerate(entries):
        yield _llava_entry(path, index, entry, root)


def _llava_entry(path: str, index: int, entry, root: str) -> Item:
    key = f"{path}#{index}"
    conversations = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(conversations, list) or not conversations:
        return Bad("sft", path, BAD_RECORD, f"{key}: no `conversations` list")
    turns = []
    for turn in conversations:
        role = ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        value = turn.get("value") if isinstance(turn, dict) else None
        if role is None or not isinstance(value, str):
            return Bad("sft", path, BAD_RECORD, f"{key}: a turn needs from=human|gpt and a string value")
        turns.append({"role": role, "content": value})
    image = entry.get("image")
    images = [image] if isinstance(image, str) else image if isinstance(image, list) else []
    if not all(isinstance(i, str) for i in images) or (image is not None and not images):
        return Bad("sft", path, BAD_RECORD, f"{key}: `image` must be a path or a list of paths")
    markers = sum(t["content"].count(IMAGE) for t in turns)
    if images and markers == 0:  # LLaVA convention: the image precedes the first user message
        first_user = next((t for t in turns if t["role"] == "user"), None)
        if first_user is None:
            return Bad("sft", path, BAD_RECORD, f"{key}: an image but no user turn")
        first_user["content"] = f"{IMAGE}\n" * len(images) + first_user["content"]
        markers = len(images)
    if markers != len(images):
        return Bad("sft", path, BAD_RECORD, f"{key}: {markers} <image> markers for {len(images)} images")
    if not any(t["role"] == "assistant" for t in turns):
        return Bad("sft", path, BAD_RECORD, f"{key}: no assistant turn to learn from")
    return Record("sft", key, path, turns=turns, images=[storage.join(root, i) for i in images])
