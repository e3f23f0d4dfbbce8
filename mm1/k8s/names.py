"""Kubernetes names and labels derived from a workflow's name.

Workflow names are free text; Kubernetes wants DNS labels. KubeRay also caps RayJob and RayService names at
47 characters (it appends 6 to make the RayCluster's name, whose limit is 53) and requires DNS-1035 labels
(lower-case, starting with a letter).
"""

from __future__ import annotations

import hashlib
import re

# KubeRay's MaxRayJobNameLength / MaxRayServiceNameLength (v1.7.0).
MAX_RAY_NAME = 47
MAX_LABEL_VALUE = 63

PART_OF = "mm1"
MANAGED_BY = "mm1"
WORKFLOW_LABEL = "mm1.io/workflow"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def dns_label(text: str, max_len: int = MAX_RAY_NAME, suffix: str = "") -> str:
    """A DNS-1035 label (a-z, 0-9, '-', starts with a letter) of at most `max_len` characters, ending in
    `suffix`. Names that had to be changed get a short hash so that distinct workflows stay distinct."""
    base = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    base = re.sub(r"-{2,}", "-", base)
    if not base or not base[0].isalpha():
        base = f"wf-{base}".rstrip("-")
    changed = base != text
    room = max_len - len(suffix)
    if changed or len(base) > room:
        tag = _short_hash(text)
        base = f"{base[: room - len(tag) - 1].rstrip('-')}-{tag}"
    return f"{base}{suffix}"


def label_value(text: str) -> str:
    """A valid label value: at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    if len(value) > MAX_LABEL_VALUE:
        tag = _short_hash(text)
        value = f"{value[: MAX_LABEL_VALUE - len(tag) - 1].rstrip('-._')}-{tag}"
    return value


def job_name(workflow_name: str) -> str:
    return dns_label(workflow_name)


def service_name(workflow_name: str) -> str:
    return dns_label(workflow_name, suffix="-serve")


def configmap_name(workflow_name: str) -> str:
    return dns_label(workflow_name, max_len=253, suffix="-workflow")


def labels(workflow_name: str, component: str) -> dict[str, str]:
    """The recommended app.kubernetes.io/* labels plus the workflow's name (for `kubectl get -l`)."""
    return {
        "app.kubernetes.io/name": "mm1",
        "app.kubernetes.io/instance": job_name(workflow_name),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        WORKFLOW_LABEL: label_value(workflow_name),
    }
