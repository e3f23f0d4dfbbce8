"""Fingerprints: a step's identity is the hash of the config it reads and of its inputs' fingerprints.

A rerun compares a step's fingerprint with the one in its manifest: equal means the step's outputs are still
valid and it is skipped. Cluster and storage settings never enter a fingerprint, so the same workflow gives the
same steps on a laptop, a Ray cluster or Kubernetes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

# Bump when a step's code changes what it produces, so old manifests stop matching.
FORMAT_VERSION = 2


def stable_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def select_keys(config: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Pick dotted keys (`data`, `packing.seq_len`) out of a nested dict, plus the sweep's entries under
    them (a sweep over `data.mixture.captions` is part of what ingest reads; one over `sft.lr` is not)."""
    keys = list(keys)
    picked: dict[str, Any] = {}
    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        picked[key] = node
    swept = {k: v for k, v in (config.get("sweep") or {}).items() if under(k, keys)}
    if swept and "sweep" not in keys:
        picked["sweep entries"] = swept
    return picked


def step_fingerprint(step: str, config: dict[str, Any], keys: Iterable[str], upstream: dict[str, str]) -> str:
    return stable_hash(
        {"step": step, "version": FORMAT_VERSION, "config": select_keys(config, keys), "upstream": upstream}
    )
