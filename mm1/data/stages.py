"""The Ray Data stages of ingest: the functions Ray workers run (kept light to import: no torch, no
transformers until the tokenize stage needs it). See mm1.data.ingest for the driver and the step as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from mm1 import storage
from mm1.data.readers import ReadOptions, load_file
from mm1.data.records import SOURCES, Record

ROWS_PER_FILE = 512  # samples per output shard file
ROW_GROUP_ROWS = 256  # samples per parquet row group: one training-loader task each
CHUNK_ROWS = 256  # rows per block emitted by the readers

VERIFIED_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("key", pa.string()),
        ("file", pa.string()),
        ("reason", pa.string()),  # "" for a kept record
        ("detail", pa.string()),
        ("doc", pa.string()),  # JSON: segments (null = image) or SFT turns
        ("images", pa.list_(pa.binary())),
        ("text", pa.string()),
        ("n_images", pa.int32()),
        ("urls_skipped", pa.int32()),
        ("downloads_failed", pa.int32()),
    ]
)
SHARD_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("images", pa.list_(pa.binary())),
    ]
)


# ----------------------------------------------------------------------------------------- read + verify


def verified_row(item) -> dict:
    if isinstance(item, Record):
        return {
            "source": item.source,
            "key": item.key,
            "file": item.file,
            "reason": "",
            "detail": "",
            "doc": json.dumps(item.turns if item.turns is not None else item.segments),
            "images": item.images,
            "text": item.text(),
            "n_images": len(item.images),
            "urls_skipped": item.urls_skipped,
            "downloads_failed": item.downloads_failed,
        }
    return {
        "source": item.source,
        "key": "",
        "file": item.file,
        "reason": item.reason,
        "detail": item.detail,
        "doc": "",
        "images": [],
        "text": "",
        "n_images": 0,
        "urls_skipped": 0,
        "downloads_failed": 0,
    }


def _read_and_verify(batch: pa.Table, options: ReadOptions) -> Iterator[pa.Table]:
    for task in batch.to_pylist():
        rows = []
        for item in load_file(task["source"], task["path"], options):
            rows.append(verified_row(item))
            if len(rows) == CHUNK_ROWS:
                yield pa.Table.from_pylist(rows, schema=VERIFIED_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=VERIFIED_SCHEMA)


def read_corpora(corpora: dict[str, list[str]], options: ReadOptions) -> ray.data.Dataset:
    """One Ray task per corpus file: read, verify images, emit records (kept and bad)."""
    tasks = [{"source": s, "path": p} for s in SOURCES for p in corpora.get(s, [])]
    if not tasks:
        raise ValueError("no corpus files to ingest")
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    return ds.map_batches(
        _read_and_verify, batch_size=1, batch_format="pyarrow", fn_kwargs={"options": options}
    )


# ----------------------------------------------------------------------------------------- tokenize + mix


@dataclass(frozen=True)
class Layout:
    """Where each position of the output stream goes: sections are (first position, count, folder), e.g.
    pre-training at [0, N) and SFT at [N, N + M); each section is cut into files of `rows_per_file`.
    Folders are mm1.storage locations every node can reach."""

    sections: tuple[tuple[int, int, str], ...]
    rows_per_file: int = ROWS_PER_FILE

    def part_starts(self, positions: np.ndarray) -> np.ndarray:
        """The first position of the output file each position belongs to."""
        starts = np.array([s for s, _, _ in self.sections])
        section = np.searchsorted(starts, positions, side="right") - 1
        offset = positions - starts[section]
        return starts[section] + offset // self.rows_per_file * self.rows_per_file

    def final_path(self, part_start: int) -> str:
        start, _, folder = next(s for s in reversed(self.sections) if s[0] <= part_start)
        return storage.join(folder, f"part-{part_start:09d}.parquet")


_POSITIONS: dict[str, dict] = {}


def _positions(ref) -> dict[str, list[int]]:
    """The plan, fetched from the object store once per worker process."""
    if ref.hex() not in _POSITIONS:
        _POSITIONS.clear()
        _POSITIONS[ref.hex()] = ray.get(ref)
    return _POSITIONS[ref.hex()]


def _tokenize_and_scatter(
    batch: pa.Table, tokenizer: str, positions_ref: list, layout: Layout, scratch: str
) -> pa.Table:
    """Tokenize kept records, then write each planned copy into a fragment of its output file.

    Returns one small row per record (source, key, tokens, copies) for the statistics. Fragments are named
    by their first position, so a retried task rewrites the same files.
    """
    from mm1.data.samples import cached_tokenizer, encode_record  # transformers: only this stage needs it

    tokenizer = cached_tokenizer(storage.local_copy(tokenizer))  # one download per node
    positions = _positions(positions_ref[0])
    meta, copies = [], []
    for row in batch.select(["source", "key", "reason", "doc", "images"]).to_pylist():
        if row["reason"]:
            continue
        encoded = encode_record(tokenizer, row["source"], json.loads(row["doc"]))
        if encoded.num_images != len(row["images"]):  # readers guarantee this; a mismatch is a bug
            raise AssertionError(
                f"{row['key']}: {encoded.num_images} image tokens, {len(row['images'])} images"
            )
        where = positions.get(row["key"], ())
        meta.append((row["source"], row["key"], len(encoded.input_ids), len(where)))
        sample = (row["source"], encoded.input_ids, encoded.labels, row["images"])
        copies += [(p, sample) for p in where]
    if copies:
        copies.sort(key=lambda c: c[0])
        where = np.array([p for p, _ in copies])
        columns = list(zip(*(sample for _, sample in copies), strict=True))
        table = pa.table(
            [pa.array(c, t) for c, t in zip(columns, SHARD_SCHEMA.types, strict=True)] + [pa.array(where)],
            names=SHARD_SCHEMA.names + ["position"],
        )
        parts = layout.part_starts(where)
        for part in np.unique(parts):
            rows = np.flatnonzero(parts == part)
            fragment = storage.join(scratch, f"{part:09d}", f"{where[rows[0]]:09d}.parquet")
            fs, path = storage.filesystem(fragment)
            fs.create_dir(storage.parent(path), recursive=True)
            pq.write_table(table.take(rows), path, filesystem=fs)
    names = ["source", "key", "n_tokens", "copies"]
    return pa.table([pa.array(c) for c in zip(*meta, strict=True)] if meta else [[]] * 4, names=names)


def _gather(batch: pa.Table, layout: Layout) -> pa.Table:
    """Concatenate one output file's fragments in position order and write it; remove the fragments."""
    files, rows = [], []
    for folder in batch.column("folder").to_pylist():
        fs, inner = storage.filesystem(folder)
        table = pq.read_table(inner, filesystem=fs)  # all fragments of this part
        table = table.sort_by("position")
        part_start = int(storage.name(folder))
        path = layout.final_path(part_start)
        target_fs, target = storage.filesystem(path)
        # Row groups of ROW_GROUP_ROWS: the training loader's unit of work (one Ray task per row group).
        pq.write_table(
            table.select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA),
            target,
            row_group_size=ROW_GROUP_ROWS,
            filesystem=target_fs,
        )
        storage.remove_tree(folder)
        files.append(path)
        rows.append(table.num_rows)
    return pa.table({"file": files, "rows": pa.array(rows, pa.int64())})


def tokenize_mix_write(
    verified: ray.data.Dataset,
    tokenizer: str,
    positions: dict[str, list[int]],
    layout: Layout,
    scratch: str,
) -> tuple[pa.Table, list[str]]:
    """Two map stages and no Ray shuffle: (1) tokenize and scatter each planned copy into a fragment of
    its output file, (2) one task per output file gathers its fragments in position order.

    Returns per-record metadata (source, key, n_tokens, copies) and the written files. Ray's all-to-all
    `sort` would do the same, but took 1-9 s on 2 cores for a few MB; a file shuffle of this size is cheap.
    `tokenizer` (a saved tokenizer's folder) and `scratch` are mm1.storage locations every node can reach.
    """
    storage.remove_tree(scratch)
    storage.make_dirs(scratch)
    positions_ref = [ray.put(positions)]  # in a list, so Ray does not resolve it before the UDF runs
    meta_ds = verified.map_batches(
        _tokenize_and_scatter,
        batch_size=CHUNK_ROWS,
        batch_format="pyarrow",
        fn_kwargs={
            "tokenizer": tokenizer,
            "positions_ref": positions_ref,
            "layout": layout,
            "scratch": str(scratch),
        },
    )
    tables = list(meta_ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    meta = pa.concat_tables([t for t in tables if t.num_rows]) if tables else None
    folders = storage.list_dirs(scratch)
    written: list[str] = []
    if folders:
        parts = ray.data.from_items([{"folder": f} for f in folders], override_num_blocks=len(folders))
        gathered = parts.map_batches(
            _gather, batch_size=1, batch_format="pyarrow", fn_kwargs={"layout": layout}
        )
        written = sorted(r["file"] for r in gathered.take_all())
    storage.remove_tree(scratch)
    if meta is None:
        meta = pa.table({"source": [], "key": [], "n_tokens": [], "copies": []})
    return meta, written
