"""One home per set of names: the workflow schema, the model, the evaluator and the CLI all read mm1.registry."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from mm1 import registry
from mm1.config import ConfigError, ConnectorConfig, ModelConfig, loads

ROOT = Path(__file__).resolve().parents[1]


def _choices(cls: type, name: str) -> tuple[str, ...]:
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]


def test_the_schema_offers_exactly_the_registered_presets_and_connectors():
    assert _choices(ModelConfig, "preset") == tuple(registry.PRESETS)
    assert _choices(ConnectorConfig, "type") == tuple(registry.CONNECTORS)


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("model.preset=tiny-vit", "model.preset", registry.PRESETS),
        ("model.connector.type=qformer", "model.connector.type", registry.CONNECTORS),
        ("pretrain.freeze=[encoder]", "pretrain.freeze[0]", registry.FREEZABLE_PARTS),
        ("evaluate.benchmarks=[shapes-vqa, mmmu]", "evaluate.benchmarks[1]", registry.BENCHMARKS),
    ],
)
def test_an_unregistered_name_is_refused_listing_the_registered_ones(override, key, allowed):
    with pytest.raises(ConfigError) as caught:
        loads("name: wf\n", "wf.yaml", [override])
    message = str(caught.value)
    assert message.startswith("wf.yaml (override") and f"{key}: " in message
    assert f"expected one of: {', '.join(allowed)}" in message


@pytest.mark.parametrize("benchmark", [name for name, spec in registry.BENCHMARKS.items() if spec.needs])
def test_a_benchmark_is_refused_without_the_files_it_reads(benchmark):
    with pytest.raises(
        ConfigError,
        match=f"needs {registry.missing_benchmark_files(benchmark, loads('name: x').evaluate)[0]}",
    ):
        loads("name: wf\n", overrides=[f"evaluate.benchmarks=[{benchmark}]", f"select.metric={benchmark}/x"])


def test_validate_names_every_registry_without_importing_torch():
    code = (
        "import sys; from mm1.cli import main; code = main(['validate', 'workflows/quickstart.yaml']); "
        "assert code == 0; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)


def test_model_info_help_lists_every_preset():
    from mm1.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    help_text = sub.choices["model-info"].format_help()
    for preset in registry.PRESETS:
        assert preset in help_text


def test_every_registered_connector_and_part_exists_in_the_model():
    from mm1.model import build_mm1, connectors
    from mm1.model.freeze import part_modules

    for spec in registry.CONNECTORS.values():
        assert hasattr(getattr(connectors, spec.builder), "from_config")
    model = build_mm1("tiny")
    assert set(part_modules(model)) == set(registry.FREEZABLE_PARTS)


def test_the_shapes_vqa_metrics_are_the_question_types_and_their_kind_splits():
    from mm1.data.shapes import QUESTION_TYPES
    from mm1.eval.heldout import SPLIT_TYPES

    expected = ("overall", *(t for t in QUESTION_TYPES if t != "caption"), *SPLIT_TYPES)
    assert registry.BENCHMARKS["shapes-vqa"].metrics() == expected
    assert registry.BENCHMARKS["shapes-vqa-kshot"].metrics() == expected
    assert registry.BENCHMARKS["vqav2"].metrics() is None  # answer types come from the annotations


@pytest.mark.parametrize(
    ("benchmarks", "metric", "expected"),
    [
        ("[shapes-vqa]", "shapes-vqa/colour", "shapes-vqa reports overall, count_all,"),
        ("[shapes-vqa]", "shapes-vqa/overall@4", "shapes-vqa is zero-shot: its metrics have no @K"),
        (
            "[shapes-vqa, shapes-caption]",
            "shapes-caption/overall",
            "shapes-caption reports cider; not 'overall'",
        ),
        (
            "[shapes-vqa, shapes-kshot]",
            "shapes-kshot/cider_0shot",
            "as METRIC@K: e.g. cider@0, cider@4, cider@8",
        ),
        ("[shapes-vqa, shapes-kshot]", "shapes-kshot/cider@2", "as METRIC@K: e.g. cider@0, cider@4, cider@8"),
    ],
)
def test_a_select_metric_no_benchmark_reports_is_refused_when_the_workflow_loads(
    benchmarks, metric, expected
):
    with pytest.raises(ConfigError) as caught:
        loads("name: wf\n", "wf.yaml", [f"evaluate.benchmarks={benchmarks}", f"select.metric={metric}"])
    message = str(caught.value)
    assert f"select.metric: '{metric}': " in message and expected in message


@pytest.mark.parametrize(
    ("benchmarks", "metric"),
    [
        ("[shapes-vqa]", "shapes-vqa/exists.uniform"),
        ("[shapes-vqa, shapes-kshot]", "shapes-kshot/cider@8"),
        ("[shapes-vqa, shapes-vqa-kshot]", "shapes-vqa-kshot/shape_of@0"),
    ],
)
def test_a_select_metric_a_benchmark_reports_is_accepted(benchmarks, metric):
    loads("name: wf\n", "wf.yaml", [f"evaluate.benchmarks={benchmarks}", f"select.metric={metric}"])
