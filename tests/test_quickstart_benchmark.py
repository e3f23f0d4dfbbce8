"""benchmarks/quickstart.py's spread over seeds (the runs themselves are the slow end-to-end tests' job)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_quickstart", ROOT / "benchmarks" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_seed_summary_gives_each_type_per_seed_mean_min_and_seeds_above_baseline():
    bench = _bench_module()
    four = {"colour_of": 0.9, "shape_of": 0.9, "exists": 0.9, "count_all": 0.9}
    good = bench.QuickstartResult(
        0, 353.2, {**four, "count_kind.uniform": 0.81}, {"count_kind.uniform": 0.86}
    )
    bad = bench.QuickstartResult(
        1, 407.9, {**four, "shape_of": 0.5, "count_kind.uniform": 0.90}, {"count_kind.uniform": 0.86}
    )
    lines = bench.seed_summary([good, bad])
    assert lines[0].split()[:3] == ["type", "s0", "s1"]
    (uniform,) = [line for line in lines if line.startswith("count_kind.uniform")]
    assert uniform.split()[1:] == ["0.81", "0.90", "0.85", "0.81", "0.86", "1/2"]
    (shape,) = [line for line in lines if line.startswith("shape_of")]
    assert shape.split()[1:] == ["0.90", "0.50", "0.70", "0.50"]  # no baseline given: no count above it
    (means,) = [line for line in lines if line.startswith("mean of the four")]
    assert means.split()[4:6] == ["0.90", "0.80"] and "target 0.85: 1/2 seeds" in means
    assert lines[-1].split()[-2:] == ["353", "408"]


def test_seeds_are_comma_separated_so_overrides_can_follow():
    bench = _bench_module()
    assert bench.seed_list("0,1,2") == [0, 1, 2]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        bench.seed_list("sft.steps=450")
