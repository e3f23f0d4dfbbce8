"""Fingerprints: a step's identity is the hash of the config it reads and of its inputs' fingerprints.

A rerun compares a step's fingerprint with the one in its manifest: equal means the step's outputs are still
valid and it is skipped. Cluster and storage settings never enter a fingerprint, so the same workflow gives the
same steps on a laptop, a Ray cluster or Kubernetes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from typing import Any

# Bump when a step's code changes what it produces, so old manifests stop matching.
FORMAT_VERSION = 1
# Settings that change how a step runs, not what it produces: left out of every fingerprint.
RUN_ONLY_KEYS = ("data.materialize",)


def stable_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def select_keys(config: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Pick dotted keys (`data`, `data.seq_len`) out of a nested dict, without the RUN_ONLY_KEYS."""
    picked: dict[str, Any] = {}
    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        for run_only in RUN_ONLY_KEYS:
            if run_only.startswith(key + ".") and isinstance(node, dict):
                node = copy.deepcopy(node)
                parent = node
                *path, last = run_only[len(key) + 1 :].split(".")
                for part in path:
                    parent = parent.get(part) if isinstance(parent, dict) else None
                if isinstance(parent, dict):
                    parent.pop(last, None)
        picked[key] = node
    return picked


def step_fingerprint(step: str, config: dict[str, Any], keys: Iterable[str], upstream: dict[str, str]) -> str:
    return stable_hash(
        {"step": step, "version": FORMAT_VERSION, "config": select_keys(config, keys), "upstream": upstream}
    )
