"""The sweep: the workflow's grid of design choices, expanded into named candidates."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from mm1.config import Workflow, with_overrides


@dataclass
class Candidate:
    name: str  # filesystem- and Ray-friendly, e.g. "connector.type-avgpool__image_size-32"
    overrides: dict[str, Any] = field(default_factory=dict)
    workflow: Workflow | None = None


def slug(key: str, value: Any) -> str:
    short = key.removeprefix("model.").removeprefix("pretrain.").removeprefix("data.")
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", f"{short}-{value}")


def candidates(wf: Workflow) -> list[Candidate]:
    """One candidate per point of the grid (a single 'base' candidate without a sweep)."""
    if not wf.sweep:
        return [Candidate("base", {}, wf)]
    keys = list(wf.sweep)
    out = []
    for values in itertools.product(*(wf.sweep[k] for k in keys)):
        overrides = dict(zip(keys, values, strict=True))
        name = "__".join(slug(k, v) for k, v in overrides.items())
        out.append(Candidate(name, overrides, with_overrides(wf, overrides)))
    return out
