"""The data position a resumed run skips to, and the micro-batch stream that skips it (a stand-in iterator,
and a real Ray one for the shuffled stream)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mm1.train.data_position import DataPosition, micro_batches


def test_skip_from_the_start_until_a_pass_length_is_known():
    position = DataPosition(consumed=48)
    assert position.skip_microbatches(workers=2, micro_batch=4) == 6
    assert position.skip_microbatches(workers=1, micro_batch=4) == 12  # counted in sequences: any layout


def test_skip_within_the_current_pass_once_its_length_is_known():
    position = DataPosition(consumed=100)
    position.end_of_pass(microbatches_per_worker=10, workers=2, micro_batch=2)  # 40 sequences a pass
    assert position.pass_sequences == 40
    assert position.skip_microbatches(workers=2, micro_batch=2) == 5  # 100 % 40 = 20 sequences in
    # Another layout drops a different remainder per pass: the measured length does not apply.
    assert position.skip_microbatches(workers=1, micro_batch=2) == 50


def test_state_round_trip_in_the_one_saved_format():
    position = DataPosition(consumed=12, pass_sequences=40, pass_layout=(2, 2))
    saved = position.to_state()
    assert saved == {"consumed": 12, "pass_sequences": 40, "pass_layout": (2, 2)}
    assert DataPosition.from_state(saved) == position
    # One format: a state without the position's fields is an error, not a guess from the step.
    with pytest.raises(KeyError):
        DataPosition.from_state({"step": 3})


def packed_rows(ids: list[int]) -> dict[str, np.ndarray]:
    """Numpy packed rows (the layout of mm1.data.loader) whose tokens are all `id`, without images."""
    n = len(ids)
    images = np.empty(n, dtype=object)
    for i in range(n):
        images[i] = np.zeros((0, 8, 8, 3), dtype=np.uint8)
    return {
        "input_ids": np.repeat(np.array(ids, dtype=np.int32)[:, None], 4, axis=1),
        "labels": np.repeat(np.array(ids, dtype=np.int32)[:, None], 4, axis=1),
        "position_ids": np.tile(np.arange(4, dtype=np.int32), (n, 1)),
        "num_tokens": np.full(n, 4, dtype=np.int32),
        "images": images,
    }


class FakeShard:
    """A stand-in for Ray's DataIterator: `rows` rows per pass, numpy batches, last partial batch dropped."""

    def __init__(self, rows: int):
        self.rows, self.passes = rows, 0

    def iter_batches(self, *, batch_size, drop_last, batch_format, local_shuffle_buffer_size, **_):
        assert drop_last and batch_format == "numpy" and local_shuffle_buffer_size is None
        self.passes += 1
        start = 1000 * self.passes
        for i in range(0, self.rows - batch_size + 1, batch_size):
            yield packed_rows(list(range(start + i, start + i + batch_size)))


def row_ids(batch: dict) -> list[int]:
    return batch["input_ids"][:, 0].tolist()


def test_stream_skips_then_continues_across_passes_and_learns_the_pass_length():
    shard, position = FakeShard(rows=7), DataPosition()
    stream = micro_batches(shard, micro_batch=2, workers=1, skip=4, position=position)
    # 3 micro-batches a pass (the 7th row is dropped): skipping 4 lands on the 2nd of the second pass.
    first = next(stream)
    assert row_ids(first) == [2002, 2003]
    assert isinstance(first["input_ids"], torch.Tensor) and first["attention_mask"].shape == (
        2,
        4,
    )  # collated
    assert position.pass_sequences == 6 and position.pass_layout == (1, 2)
    assert [row_ids(next(stream)) for _ in range(2)] == [[2004, 2005], [3000, 3001]]


def test_stream_fails_loudly_without_a_single_micro_batch():
    stream = micro_batches(FakeShard(rows=3), micro_batch=4, workers=1, skip=0, position=DataPosition())
    with pytest.raises(RuntimeError, match="no micro-batch of 4 sequences"):
        next(stream)


def test_current_pass_follows_the_known_pass_length():
    position = DataPosition(consumed=100)
    assert position.current_pass(workers=2, micro_batch=2) == 0  # length unknown: counted from the start
    position.end_of_pass(microbatches_per_worker=10, workers=2, micro_batch=2)  # 40 a pass
    assert position.current_pass(workers=2, micro_batch=2) == 2
    assert position.current_pass(workers=1, micro_batch=2) == 0


def test_shuffled_passes_differ_and_a_resumed_pass_skips_its_count(ray_session):
    """A real Ray iterator: each pass is a new permutation of the rows (seed + pass); a stream resumed two
    micro-batches into a pass yields the rest of that pass, the same rows in the same order."""
    import ray

    def ids(stream, n):
        return [row_ids(next(stream)) for _ in range(n)]

    dataset = ray.data.from_items(
        [{k: v[0] for k, v in packed_rows([i]).items()} for i in range(24)], override_num_blocks=3
    ).materialize()
    position = DataPosition()
    stream = micro_batches(dataset.iterator(), 4, 1, 0, position, shuffle_buffer=12, seed=7)
    first, second = ids(stream, 6), ids(stream, 6)
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(24))
    assert first != second
    assert first != [list(range(i, i + 4)) for i in range(0, 24, 4)]  # not the stored order

    resumed_at = DataPosition(consumed=24 + 8, pass_sequences=24, pass_layout=(1, 4))
    skip = resumed_at.skip_microbatches(1, 4)
    resumed = micro_batches(dataset.iterator(), 4, 1, skip, resumed_at, shuffle_buffer=12, seed=7)
    rest = sum(ids(resumed, 4), [])
    assert skip == 2 and len(set(rest)) == 16
    # Blocks in a fixed order (mm1.data.loader keeps the seeded order) and a seeded buffer: the resumed pass
    # is exactly the rest of the uninterrupted one, row for row.
    assert rest == sum(second[2:], [])


def test_train_ingest_keeps_the_dataset_order_and_prints_no_warning():
    """Ray Train applies its own execution options to a stage's dataset: ours keep blocks in order (a
    streamed dataset would otherwise reach the worker in task-finishing order) and are built without
    Ray 2.60's deprecated `exclude_resources` argument, whose warning reached the quick start's console."""
    import warnings

    from ray.data import DataContext

    from mm1.train.launch import ordered_ingest

    DataContext.get_current()  # built first: its own deprecation notices are not ours
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        options = ordered_ingest()._resolve_execution_options("train")
    assert options.preserve_order
    assert options.resource_limits == DataContext.get_current().execution_options.resource_limits
    assert not [w for w in caught if "ray" in w.filename.lower() or "mm1" in w.filename.lower()], caught
