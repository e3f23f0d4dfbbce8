"""How candidates train: how many at once (never so many that Ray Data is left without a CPU), and when
their packed rows are kept in the object store."""

from __future__ import annotations

import pytest

from mm1.data.loader import packed_bytes_estimate
from mm1.workflow.steps import concurrent_runs, should_materialize


@pytest.mark.parametrize(
    ("candidates", "cpus", "per_run", "expected"),
    [
        (6, 4, 1, 3),  # the laptop's 4 logical CPUs: three trainers, one CPU for reading and packing
        (2, 4, 1, 2),
        (1, 4, 2, 1),
        (3, 4, 2, 1),  # two 2-CPU trainers would hold every CPU
        (4, 2, 4, 1),  # larger than the cluster's spare CPUs: still runs, alone
        (8, 17, 4, 4),
    ],
)
def test_one_cpu_is_left_for_the_data_pipeline(candidates, cpus, per_run, expected):
    assert concurrent_runs(candidates, cpus, per_run) == expected


def test_materialize_follows_the_mode_and_the_budget():
    assert should_materialize("always", 10**12, 1.0)
    assert not should_materialize("never", 1, 10**12)
    assert should_materialize("auto", 100, 100) and not should_materialize("auto", 101, 100)


def test_packed_size_estimate_bounds_tokens_and_decoded_images():
    # 20,000 SFT samples of the Shapes study: 1.77M tokens, at most 28,100 images at 64 px
    estimate = packed_bytes_estimate(1_770_000, 28_100, seq_len=256, image_size=64, crops=1)
    images = 28_100 * 64 * 64 * 3
    assert images < estimate < images + 1_770_000 / 0.7 * 12 + 256 * 12
    assert packed_bytes_estimate(0, 10, seq_len=256, image_size=64, crops=5) == 10 * 5 * 64 * 64 * 3
