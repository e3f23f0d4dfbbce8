"""The ingest step: corpora (real formats, or generated Shapes) -> tokenizer + pre-training/SFT shards + stats.

Ray Data stages (the caller has already called `ray.init`; stage code lives in mm1.data.stages):
  1. read + verify, one task per corpus file (materialized): every reader yields records or counted bad
     records; images are decoded through mm1.data.preprocess and stored as RGB PNG at native size
     (resizing happens at training time, per candidate). Fails past `data.max_bad_fraction`, naming the
     worst files (stats.json is written first).
  2. tokenizer (driver): a byte-level BPE trained on the kept text (or `data.tokenizer`), saved to tokenizer/.
  3. plan (driver): the mixture (mm1.data.mixture) gives each pre-training copy a position in one interleaved
     stream [0, N); SFT samples get a seeded permutation [N, N + M).
  4. tokenize + scatter, then gather: two map stages and no Ray shuffle. Samples are tokenized with
     mm1.data.chat (ONE `<image>` token per image) and each copy is written into a fragment of its output
     file; one task per output file then concatenates its fragments in position order. Output files are
     contiguous slices of the stream: `pretrain/part-<first position>.parquet`, `sft/part-....parquet`, of
     `ROWS_PER_FILE` samples each in row groups of `ROW_GROUP_ROWS` (the training loader's unit of work;
     both sizes are set in mm1.data.stages and nowhere else).
Where things go: the driver writes its own files (stats.json, the tokenizer) into `out_dir`, its disk; Ray
tasks, which may run on nodes that cannot see that disk, read and write only under `out_uri`, the step's folder
in the run directory (the same folder for a local run; s3://... for an object-store root): generated corpora,
the tokenizer they load, scratch fragments and the shards.
Shard schema: source string, input_ids list<int32>, labels list<int32> (-100 = no loss), images list<binary>
(PNG, in the order of the `<image>` tokens). The same seed gives the same shard contents.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from ray.data import DataContext

from mm1 import storage
from mm1.config import DataConfig
from mm1.data import files
from mm1.data.mixture import MixturePlan, plan_mixture
from mm1.data.readers import EXTENSIONS, ReadOptions
from mm1.data.records import PRETRAIN_SOURCES, BadTally
from mm1.data.shapes_corpus import write_shapes_corpora
from mm1.data.stages import Layout, read_corpora, tokenize_mix_write
from mm1.errors import UserFacingError

MAX_TOKENIZER_TEXTS = 200_000  # enough text to fit a small BPE; keeps the driver's memory bounded


class IngestError(UserFacingError, RuntimeError):
    """The corpora are too corrupt to train on (or absent); the message names the worst files."""

    hint = "fix or remove the files named above, or raise data.max_bad_fraction to train on what is readable"


# ----------------------------------------------------------------------------------------- driver


@contextmanager
def _data_context(progress: bool):
    ctx = DataContext.get_current()
    names = (
        "enable_progress_bars",
        "enable_operator_progress_bars",
        "print_on_execution_start",
        "op_resource_reservation_enabled",
    )
    saved = {name: getattr(ctx, name) for name in names}
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = progress
    ctx.print_on_execution_start = progress
    # Per-operator CPU reservations ran one task at a time on a 2-CPU node; ingest stages are one map each.
    ctx.op_resource_reservation_enabled = False
    try:
        yield ctx
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)


def resolve_corpora(data: DataConfig, out_uri: str, progress: bool) -> tuple[dict[str, list[str]], bool]:
    """Corpus files per source; generates Shapes into out_uri/corpora when the workflow names none."""
    c = data.corpora
    named = {"interleaved": c.interleaved, "captions": c.captions, "text": c.text, "sft": c.sft}
    if not any(named.values()):
        shared = storage.join(out_uri, "corpora")
        if progress:
            print(f"ingest: no corpora named; generating Shapes into {shared}")
        # Straight into the run folder: the read tasks may run on nodes that cannot see this disk.
        return write_shapes_corpora(shared, data.shapes), True
    try:
        return {s: files.expand_paths(list(p), EXTENSIONS[s]) for s, p in named.items() if p}, False
    except FileNotFoundError as exc:
        raise IngestError(f"data.corpora: {exc}") from None


def _light_table(ds: ray.data.MaterializedDataset, columns: list[str]) -> pa.Table:
    """Some columns of a materialized dataset, read zero-copy from the object store (no new Ray Data job)."""
    tables = [ray.get(ref).select(columns) for ref in ds.to_arrow_refs()]
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


def _tally(meta: pa.Table) -> tuple[dict[str, dict], BadTally]:
    per_source: dict[str, dict] = defaultdict(Counter)
    tally = BadTally()
    for row in meta.to_pylist():
        s = per_source[row["source"]]
        s["read"] += 1
        if row["reason"]:
            s["dropped"] += 1
            tally.add(row["reason"], row["file"], row["detail"])
        else:
            s["kept"] += 1
            s["images"] += row["n_images"]
        s["urls_skipped"] += row["urls_skipped"]
        s["downloads_failed"] += row["downloads_failed"]
    return {k: dict(v) for k, v in per_source.items()}, tally


def _check_bad_fraction(tally: BadTally, read: int, max_bad: float) -> str | None:
    fraction = tally.total / read if read else 1.0
    if read and fraction <= max_bad:
        return None
    worst = "; ".join(
        f"{w['file']} ({w['bad']} bad: " + ", ".join(f"{r} {n}" for r, n in w["reasons"].items()) + ")"
        for w in tally.worst_files()
    )
    examples = "; ".join(tally.examples.values())
    return (
        f"{tally.total} of {read} records ({fraction:.1%}) are corrupt, more than data.max_bad_fraction="
        f"{max_bad}. Worst files: {worst or 'none'}. Examples: {examples or 'none'}"
    )


def _prepare_tokenizer(
    data: DataConfig, verified: ray.data.MaterializedDataset, path: Path, shared: str
) -> dict:
    """Train (or load) the tokenizer, save it to `path` and make it readable at `shared` for the tasks."""
    from mm1.data.tokenizer import load_tokenizer, train_bpe_tokenizer

    if data.tokenizer:
        tokenizer = load_tokenizer(data.tokenizer)
        trained = False
    else:
        texts = _light_table(verified, ["key", "text", "reason"])
        columns = [texts.column(c).to_pylist() for c in ("key", "text", "reason")]
        # Sorted by key: the same merges whatever order Ray delivered the records in.
        rows = sorted((k, t) for k, t, r in zip(*columns, strict=True) if not r)
        step = max(1, len(rows) // MAX_TOKENIZER_TEXTS)
        tokenizer = train_bpe_tokenizer([t for _, t in rows[::step]], data.vocab_size)
        trained = True
    if path.exists():
        shutil.rmtree(path)
    tokenizer.save_pretrained(str(path))
    if storage.is_remote(shared):
        storage.copy_tree(str(path), shared)
    return {"path": shared, "vocab_size": len(tokenizer), "trained": trained, "name": data.tokenizer}


def _mixture_stats(plan: MixturePlan, tokens_by_source: dict[str, int]) -> dict:
    total_tokens = sum(tokens_by_source.values()) or 1
    return {
        "declared": plan.declared,
        "effective_weights": plan.weights,
        "realized_samples": plan.realized(),
        "realized_tokens": {s: tokens_by_source.get(s, 0) / total_tokens for s in plan.declared},
        "abs_error_pp": {
            s: round(100 * abs(plan.realized()[s] - plan.weights.get(s, 0.0)), 3) for s in plan.declared
        },
        "samples": plan.counts,
        "available": plan.available,
        "epochs": plan.epochs(),
        "total": plan.total,
        "notes": plan.notes,
    }


def run_ingest(data: DataConfig, out_dir: Path, out_uri: str | None = None, progress: bool = True) -> dict:
    """THE ingest step (see the module docstring), a function of the `data` section alone:
    out_dir/{tokenizer,stats.json} on the driver, out_uri/{tokenizer,pretrain,sft} for every node (`out_uri`
    defaults to `out_dir`: a local run)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_uri = out_uri or str(out_dir)
    clock: dict[str, float] = {}
    t0 = time.perf_counter()
    corpora, generated = resolve_corpora(data, out_uri, progress)
    clock["generate_shapes_s"] = time.perf_counter() - t0
    options = ReadOptions(download_images=data.download_images, sft_image_root=data.corpora.sft_image_root)
    stats: dict = {
        "generated_shapes": generated,
        "corpora": {s: len(p) for s, p in corpora.items()},
        "max_bad_fraction": data.max_bad_fraction,
    }
    with _data_context(progress):
        t = time.perf_counter()
        verified = read_corpora(corpora, options).materialize()
        meta = _light_table(
            verified,
            ["source", "key", "file", "reason", "detail", "n_images", "urls_skipped", "downloads_failed"],
        )
        per_source, tally = _tally(meta)
        read = sum(s["read"] for s in per_source.values())
        stats.update(
            records_read=read,
            records_kept=read - tally.total,
            records_dropped=tally.total,
            dropped=tally.to_dict(),
            bad_fraction=tally.total / read if read else 0.0,
            sources=per_source,
        )
        clock["read_verify_s"] = time.perf_counter() - t
        failure = _check_bad_fraction(tally, read, data.max_bad_fraction)
        if failure:
            stats["error"] = failure
            _write_stats(out_dir, stats, clock)
            raise IngestError(failure)

        t = time.perf_counter()
        tokenizer_uri = storage.join(out_uri, "tokenizer")
        stats["tokenizer"] = _prepare_tokenizer(data, verified, out_dir / "tokenizer", tokenizer_uri)
        clock["tokenizer_s"] = time.perf_counter() - t

        t = time.perf_counter()
        positions, layout, plan = _plan_outputs(meta, data, out_uri)
        tokens, written = tokenize_mix_write(
            verified, tokenizer_uri, positions, layout, storage.join(out_uri, "_scratch")
        )
        clock["tokenize_mix_write_s"] = time.perf_counter() - t

    _output_stats(stats, tokens, plan, written, out_uri)
    _write_stats(out_dir, stats, clock)
    if progress:
        _print_summary(stats)
    return stats


def _plan_outputs(
    meta: pa.Table, data, out_uri: str
) -> tuple[dict[str, list[int]], Layout, MixturePlan | None]:
    """Positions per kept key: pre-training by the mixture plan at [0, N), SFT shuffled at [N, N + M)."""
    keys: dict[str, list[str]] = defaultdict(list)
    for source, key, reason in zip(
        *(meta.column(c).to_pylist() for c in ("source", "key", "reason")), strict=True
    ):
        if not reason:
            keys[source].append(key)
    for k in keys.values():
        k.sort()  # scheduling-independent order: the plan indexes into it
    positions: dict[str, list[int]] = defaultdict(list)
    sections: list[tuple[int, int, str]] = []
    plan = None
    for folder in ("pretrain", "sft"):
        storage.remove_tree(storage.join(out_uri, folder))  # a rerun must not mix old shards with new ones
        storage.make_dirs(storage.join(out_uri, folder))
    available = {s: len(keys.get(s, [])) for s in PRETRAIN_SOURCES}
    if sum(available.values()):
        m = data.mixture
        declared = {"interleaved": m.interleaved, "captions": m.captions, "text": m.text}
        plan = plan_mixture(available, declared, data.seed)
        for source, (index, where) in plan.draws.items():
            for i, p in zip(index.tolist(), where.tolist(), strict=True):
                positions[keys[source][i]].append(p)
        sections.append((0, plan.total, storage.join(out_uri, "pretrain")))
    sft = keys.get("sft", [])
    if sft:
        start = plan.total if plan else 0
        order = np.random.default_rng([data.seed, 11]).permutation(len(sft))
        for key, p in zip(sft, order.tolist(), strict=True):
            positions[key].append(start + p)
        sections.append((start, len(sft), storage.join(out_uri, "sft")))
    return dict(positions), Layout(tuple(sections)), plan


def _output_stats(stats: dict, tokens: pa.Table, plan, written: list[str], out_uri: str) -> None:
    in_shards: dict[str, Counter] = defaultdict(Counter)
    columns = (tokens.column(c).to_pylist() for c in ("source", "n_tokens", "copies"))
    for source, n_tokens, copies in zip(*columns, strict=True):
        s = stats["sources"][source]
        s["tokens"] = s.get("tokens", 0) + n_tokens
        in_shards[source]["samples"] += copies
        in_shards[source]["tokens"] += copies * n_tokens
    for source, s in stats["sources"].items():
        s.setdefault("tokens", 0)
        s["in_shards"] = dict(in_shards.get(source, Counter()))
    stats["images"] = sum(s.get("images", 0) for s in stats["sources"].values())
    stats["tokens"] = sum(s["tokens"] for s in stats["sources"].values())
    for split, sources in (("pretrain", PRETRAIN_SOURCES), ("sft", ("sft",))):
        folder = storage.join(out_uri, split)
        split_files = [f for f in written if storage.parent(f) == folder]
        stats[split] = {
            "dir": folder,
            "files": len(split_files),
            "samples": sum(in_shards[s]["samples"] for s in sources),
            "tokens": sum(in_shards[s]["tokens"] for s in sources),
        }
    stats["mixture"] = (
        _mixture_stats(plan, {s: in_shards[s]["tokens"] for s in PRETRAIN_SOURCES}) if plan else None
    )


def _write_stats(out_dir: Path, stats: dict, clock: dict[str, float]) -> None:
    stats["seconds"] = {k: round(v, 2) for k, v in clock.items()}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True))


def _print_summary(stats: dict) -> None:
    print(
        f"ingest: read {stats['records_read']} records, kept {stats['records_kept']}, "
        f"dropped {stats['records_dropped']}"
        + (f" {stats['dropped']['by_reason']}" if stats["records_dropped"] else "")
    )
    if stats["mixture"]:
        mix = stats["mixture"]
        shares = ", ".join(
            f"{s} {mix['realized_samples'][s]:.1%} (declared {mix['declared'][s]:.0%})"
            for s in mix["declared"]
        )
        print(f"ingest: pre-training {stats['pretrain']['samples']} samples; mixture {shares}")
    print(
        f"ingest: sft {stats['sft']['samples']} samples; {stats['tokens']} tokens, {stats['images']} images"
    )
