"""Every benchmark mm1.registry names is built, asked and scored as its spec says."""

from __future__ import annotations

from eval_helpers import write_coco_and_vqav2

from mm1.config import loads
from mm1.eval.benchmarks import build_benchmarks
from mm1.registry import BENCHMARKS


def test_every_registered_benchmark_builds_with_its_kind(tmp_path):
    files = write_coco_and_vqav2(tmp_path, num_images=4)
    wf = loads(
        "name: wf\n",
        overrides=[
            f"evaluate.benchmarks=[{', '.join(BENCHMARKS)}]",
            "evaluate.num_scenes=4",
            "evaluate.num_questions=6",
            "evaluate.kshot=[0, 1]",
            "evaluate.kshot_pool=2",
            *(f"evaluate.{key}={value}" for key, value in files.items()),
        ],
    )
    built = build_benchmarks(wf.evaluate)
    assert [b.name for b in built] == list(BENCHMARKS)
    for bench in built:
        assert bench.kind == BENCHMARKS[bench.name].kind and bench.items
        assert bool(bench.shots) == BENCHMARKS[bench.name].kshot == bool(bench.pool)
