"""The pre-training mixture: the plan itself, and a 5,000-sample run through the Ray Data write stage."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from mm1.data.mixture import plan_mixture, quotas
from mm1.data.records import Record
from mm1.data.stages import (
    ROW_GROUP_ROWS,
    ROWS_PER_FILE,
    VERIFIED_SCHEMA,
    Layout,
    tokenize_mix_write,
    verified_row,
)
from mm1.data.tokenizer import train_bpe_tokenizer

DECLARED = {"interleaved": 0.45, "captions": 0.45, "text": 0.10}


def test_quotas_sum_to_the_total():
    for total in (1, 7, 100, 4999):
        q = quotas(DECLARED, total)
        assert sum(q.values()) == total
        assert all(abs(q[s] - w * total) < 1 for s, w in DECLARED.items())


def test_plan_shares_repeats_and_positions():
    available = {"interleaved": 700, "captions": 3000, "text": 2500}
    plan = plan_mixture(available, DECLARED, seed=0, total=5000)
    assert plan.counts == {"interleaved": 2250, "captions": 2250, "text": 500}
    for source, share in plan.realized().items():
        assert abs(share - DECLARED[source]) <= 0.0002
    positions = np.concatenate([where for _, where in plan.draws.values()])
    assert sorted(positions.tolist()) == list(range(5000))  # every slot filled exactly once
    uses = Counter(plan.draws["interleaved"][0].tolist())
    assert len(uses) == 700 and max(uses.values()) - min(uses.values()) <= 1  # whole epochs, evenly
    assert plan.epochs()["interleaved"] == pytest.approx(2250 / 700, abs=1e-3)
    assert len(set(plan.draws["captions"][0].tolist())) == 2250  # subsampled without repeats


def test_plan_is_deterministic_per_seed():
    available = {"interleaved": 50, "captions": 80, "text": 20}
    a, b, c = (plan_mixture(available, DECLARED, seed=s) for s in (1, 1, 2))
    for source in a.draws:
        assert all(np.array_equal(x, y) for x, y in zip(a.draws[source], b.draws[source], strict=True))
    assert any(not np.array_equal(a.draws[s][1], c.draws[s][1]) for s in a.draws)


def test_missing_sources_give_their_share_away():
    plan = plan_mixture({"interleaved": 0, "captions": 10, "text": 10}, DECLARED, seed=0)
    assert plan.weights == pytest.approx({"captions": 0.45 / 0.55, "text": 0.10 / 0.55})
    assert plan.notes and "interleaved" in plan.notes[0]
    with pytest.raises(ValueError, match="no pre-training samples"):
        plan_mixture({"interleaved": 0, "captions": 0, "text": 0}, DECLARED, seed=0)


def test_5000_sample_mixture_through_ray_data(ray_session, tmp_path):
    """Realized shares in the written shards are within 2 percentage points of the declared weights."""
    available = {"interleaved": 700, "captions": 3000, "text": 2500}
    records = [
        Record(source, f"{source}#{i:05d}", f"{source}.file", segments=[f"{source} sample {i}"])
        for source, n in available.items()
        for i in range(n)
    ]
    table = pa.Table.from_pylist([verified_row(r) for r in records], schema=VERIFIED_SCHEMA)
    verified = ray.data.from_arrow(table).repartition(8)
    tokenizer_dir = tmp_path / "tokenizer"
    train_bpe_tokenizer([r.text() for r in records[:500]], 300).save_pretrained(str(tokenizer_dir))
    plan = plan_mixture(available, DECLARED, seed=0, total=5000)
    positions: dict[str, list[int]] = {}
    keys = {s: sorted(r.key for r in records if r.source == s) for s in available}
    for source, (index, where) in plan.draws.items():
        for i, p in zip(index.tolist(), where.tolist(), strict=True):
            positions.setdefault(keys[source][i], []).append(p)
    (tmp_path / "pretrain").mkdir()
    meta, written = tokenize_mix_write(
        verified,
        str(tokenizer_dir),
        positions,
        Layout(((0, 5000, str(tmp_path / "pretrain")),)),
        tmp_path / "s",
    )
    assert len(written) == -(-5000 // ROWS_PER_FILE) and not (tmp_path / "s").exists()
    # Files of ROWS_PER_FILE samples (the last one the rest), in row groups of ROW_GROUP_ROWS: the loader's unit.
    for f in written:
        meta_f = pq.ParquetFile(f).metadata
        groups = [meta_f.row_group(g).num_rows for g in range(meta_f.num_row_groups)]
        assert all(n == ROW_GROUP_ROWS for n in groups[:-1]) and 0 < groups[-1] <= ROW_GROUP_ROWS
    assert [pq.ParquetFile(f).metadata.num_rows for f in written[:-1]] == [ROWS_PER_FILE] * (len(written) - 1)
    sources = [s for f in written for s in pq.read_table(f, columns=["source"]).column("source").to_pylist()]
    assert len(sources) == 5000
    realized = {s: n / 5000 for s, n in Counter(sources).items()}
    for source, weight in DECLARED.items():
        assert abs(realized[source] - weight) <= 0.02, json.dumps(realized)
    # the stream is interleaved: every file holds all three sources near their shares
    first = Counter(pq.read_table(written[0], columns=["source"]).column("source").to_pylist())
    assert set(first) == set(DECLARED) and abs(first["text"] / ROWS_PER_FILE - 0.10) < 0.05
    assert int(np.sum(meta.column("copies").to_numpy())) == 5000
