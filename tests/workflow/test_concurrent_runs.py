"""How many sweep candidates train at once: never so many that Ray Data is left without a CPU."""

from __future__ import annotations

import pytest

from mm1.workflow.steps import concurrent_runs


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
