"""The workflow schema: typed dataclasses used as OmegaConf structured configs, and `load`.

`load(path, overrides)` reads a workflow YAML file, merges command-line overrides (`pretrain.steps=50`) and
returns a typed `Workflow`. Every user mistake becomes one `ConfigError` that names the file, the line and the
key path; nothing here raises a bare traceback for bad input. The schema's parts, each importable from here:
  mm1.config_sections  the sections, one dataclass each, and `Workflow`
  mm1.config_cluster   the `storage` and `cluster` sections and their rules
  mm1.config_serving   the `deploy` section: the serving options it shares with services.settings.ServeSettings
  mm1.config_checks    the rules types cannot express (names are checked against mm1.registry)
  mm1.config_validate  `ConfigError`, the schema walk with line numbers and did-you-means
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from mm1.config_checks import check_moved_keys, check_semantics
from mm1.config_cluster import ClusterConfig, HeadNode, NodeGroup, StorageConfig, Toleration
from mm1.config_sections import (
    ConnectorConfig,
    CorporaConfig,
    DataConfig,
    EvaluateConfig,
    MixtureConfig,
    ModelConfig,
    PackingConfig,
    ReportConfig,
    SelectConfig,
    ShapesConfig,
    TrainConfig,
    Workflow,
)
from mm1.config_serving import AutoscalingConfig, DeployConfig, ServingOptions
from mm1.config_validate import ConfigError, SchemaChecker, line_index

__all__ = [
    "AutoscalingConfig",
    "ClusterConfig",
    "ConfigError",
    "ConnectorConfig",
    "CorporaConfig",
    "DataConfig",
    "DeployConfig",
    "EvaluateConfig",
    "HeadNode",
    "MixtureConfig",
    "ModelConfig",
    "NodeGroup",
    "PackingConfig",
    "ReportConfig",
    "SelectConfig",
    "ServingOptions",
    "ShapesConfig",
    "StorageConfig",
    "Toleration",
    "TrainConfig",
    "Workflow",
    "dump",
    "load",
    "loads",
    "to_dict",
    "with_overrides",
]


def load(path: str | Path, overrides: Sequence[str] = ()) -> Workflow:
    """Read, validate and type a workflow file; `overrides` are `dotted.key=value` strings (YAML values)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            source, "", f"cannot read the workflow file ({exc.__class__.__name__}: {exc})"
        ) from None
    return loads(text, source, overrides)


def loads(text: str, source: str = "<workflow>", overrides: Sequence[str] = ()) -> Workflow:
    try:
        lines = line_index(text)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, "", f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            source,
            "",
            "the top level must be a mapping of sections (name, data, model, ...)",
            lines.get("", 1),
        )
    overridden = apply_overrides(document, overrides, source)
    checker = SchemaChecker(source, lines, overridden)
    check_moved_keys(document, checker)
    checker.check_dataclass(document, Workflow, "")
    workflow = _to_workflow(document)
    check_semantics(workflow, checker)
    check_sweep(workflow, checker)
    return workflow


def apply_overrides(document: dict, overrides: Sequence[str], source: str) -> dict[str, str]:
    """Set each `a.b.c=value` into `document`; returns key path -> the override text (for error messages)."""
    applied: dict[str, str] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                "command line", override, "an override must look like KEY=VALUE (e.g. pretrain.steps=50)"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = document
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        applied[key] = override
    return applied


def _to_workflow(document: dict) -> Workflow:
    merged = OmegaConf.merge(OmegaConf.structured(Workflow), OmegaConf.create(document))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_dict(workflow: Workflow) -> dict[str, Any]:
    """Plain data (for fingerprints, the run folder's copy, and the Kubernetes ConfigMap)."""
    return OmegaConf.to_container(OmegaConf.structured(workflow), resolve=True)  # type: ignore[return-value]


def dump(workflow: Workflow) -> str:
    return yaml.safe_dump(to_dict(workflow), sort_keys=False)


def with_overrides(workflow: Workflow, overrides: dict[str, Any]) -> Workflow:
    """A copy of `workflow` with dotted-key overrides applied and validated (used by the sweep)."""
    document = to_dict(workflow)
    if "model.llm" in overrides and workflow.data.tokenizer == workflow.model.llm:
        # The tokenizer was the base LLM's (Workflow.__post_init__): each candidate's LLM brings its own.
        document["data"]["tokenizer"] = ""
    applied = apply_overrides(
        document,
        [
            f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in overrides.items()
        ],
        "sweep",
    )
    checker = SchemaChecker("sweep", {}, applied)
    checker.check_dataclass(document, Workflow, "")
    return _to_workflow(document)


# What candidates may differ in: what the training steps read (mm1.workflow.steps). Candidates are compared
# on one evaluation, and selection, serving and the cluster are not design choices of a model.
SWEEPABLE = ("data", "packing.seq_len", "packing.max_images", "model", "pretrain", "sft")


def check_sweep(wf: Workflow, checker: SchemaChecker) -> None:
    """Every swept key must be a design choice and every value must fit its key (type and choices),
    checked as the candidate is built."""
    fail = checker.fail
    for key, values in wf.sweep.items():
        path = f"sweep.{key}"
        if not any(key == p or key.startswith(p + ".") for p in SWEEPABLE):
            fail(
                path,
                "a sweep varies what the candidates are trained on and with; "
                f"its keys must be under one of: {', '.join(SWEEPABLE)} "
                "(candidates are compared on one evaluation, selection and deployment)",
            )
            continue
        if not values:
            fail(path, "must list at least one value")
        for value in values:
            try:
                with_overrides(wf, {key: value})
            except ConfigError as exc:
                fail(path, f"value {value!r} does not fit the key '{key}': {exc.message}")
