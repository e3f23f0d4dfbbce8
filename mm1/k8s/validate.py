"""Check manifests offline before they reach a cluster; every problem is one line naming object and path.

    RayJob/quickstart $.spec.rayClusterSpec.workerGroupSpecs[0].maxReplicas: 'four' is not of type 'integer'

Four layers: the object's schema (KubeRay CRD or the bundled core schema), object-metadata rules the API
server applies (name and label syntax), the rules the KubeRay operator enforces when it reconciles (name
length, replica bounds, token auth needs Ray >= 2.52, a serveConfigV2 that Ray Serve accepts), and our own
policy: secrets are referenced, never written into the manifest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
import yaml

from mm1.k8s import schemas
from mm1.k8s.names import MAX_RAY_NAME
from mm1.k8s.schemas import K8S_VERSION, core_validator, crd_validator

__all__ = ["validate", "validate_all", "has_schema", "inline_secrets"]

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
# Env names that hold credentials; their value must come from a Secret (valueFrom), never be written inline.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY", re.I)
# Kinds whose names KubeRay turns into other objects' names (and so caps at 47 characters, DNS-1035).
RAY_KINDS = ("RayJob", "RayService")
DNS1035_KINDS = ("Service", "Namespace")


def _where(obj: dict[str, Any]) -> str:
    name = (obj.get("metadata") or {}).get("name", "?") if isinstance(obj, dict) else "?"
    return f"{obj.get('kind', '?') if isinstance(obj, dict) else '?'}/{name}"


def _path(parts: Iterable[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _message(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if schema.get("x-kubernetes-int-or-string") and error.validator in ("pattern", "anyOf"):
        return f"{error.instance!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)"
    if error.validator == "anyOf" and error.context:
        return jsonschema.exceptions.best_match(error.context).message
    return error.message


def _schema_errors(validator: Any, obj: dict[str, Any]) -> list[str]:
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_where(obj)} {_path(e.absolute_path)}: {_message(e)}" for e in errors]


def has_schema(obj: dict[str, Any], k8s_version: str = K8S_VERSION) -> bool:
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    return bool(crd_validator(api_version, kind) or core_validator(api_version, kind, k8s_version))


# ---------------------------------------------------------------------------------------- metadata


def _label_key_errors(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return f"label key prefix '{prefix}' must be a DNS subdomain"
    if len(name) > 63 or not LABEL_NAME.fullmatch(name):
        return f"label key name '{name}' must be 1-63 characters of [A-Za-z0-9-_.], alphanumeric at both ends"
    return None


def _metadata_errors(obj: dict[str, Any]) -> list[str]:
    where = _where(obj)
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [f"{where} $.metadata: missing"]
    errors = []
    name = meta.get("name")
    kind = obj.get("kind", "")
    if not isinstance(name, str) or not name:
        errors.append(f"{where} $.metadata.name: missing")
    elif kind in RAY_KINDS:
        if len(name) > MAX_RAY_NAME or not DNS1035_LABEL.fullmatch(name):
            errors.append(
                f"{where} $.metadata.name: KubeRay needs a DNS-1035 label of at most {MAX_RAY_NAME} characters "
                "(lower-case letters, digits, '-', starting with a letter)"
            )
    elif kind in DNS1035_KINDS:
        if len(name) > 63 or not DNS1035_LABEL.fullmatch(name):
            errors.append(f"{where} $.metadata.name: must be a DNS-1035 label of at most 63 characters")
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
        errors.append(f"{where} $.metadata.name: must be a DNS subdomain (lower-case, digits, '-', '.')")
    namespace = meta.get("namespace")
    if namespace is not None and (len(namespace) > 63 or not DNS1123_LABEL.fullmatch(str(namespace))):
        errors.append(f"{where} $.metadata.namespace: '{namespace}' must be a DNS label")
    errors += _labels_errors(where, "$.metadata.labels", meta.get("labels") or {})
    return errors


def _labels_errors(where: str, path: str, labels: dict[str, Any]) -> list[str]:
    errors = []
    for key, value in labels.items():
        problem = _label_key_errors(str(key))
        if problem:
            errors.append(f"{where} {path}: {problem}")
        if not isinstance(value, str) or (value and (len(value) > 63 or not LABEL_NAME.fullmatch(value))):
            errors.append(
                f"{where} {path}.{key}: label value {value!r} must be a string of at most 63 characters "
                "of [A-Za-z0-9-_.], alphanumeric at both ends"
            )
    return errors


# ------------------------------------------------------------------------------------ KubeRay rules


def _version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    return tuple(int(x or 0) for x in match.groups()) if match else None


def _cluster_rules(where: str, path: str, spec: dict[str, Any]) -> list[str]:
    """What the operator's ValidateRayClusterSpec rejects (facts from KubeRay v1.7.0)."""
    errors = []
    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token":
        version = _version_tuple(spec.get("rayVersion", ""))
        if version is None or version < (2, 52, 0):
            errors.append(
                f"{where} {path}.rayVersion: token auth (authOptions.mode=token) needs rayVersion >= 2.52.0, "
                f"got {spec.get('rayVersion')!r}"
            )
    head = (spec.get("headGroupSpec") or {}).get("template", {}).get("spec", {})
    if not head.get("containers"):
        errors.append(f"{where} {path}.headGroupSpec.template.spec.containers: needs at least one container")
    seen: set[str] = set()
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        at = f"{path}.workerGroupSpecs[{i}]"
        name = group.get("groupName")
        if name in seen:
            errors.append(f"{where} {at}.groupName: '{name}' is used by another worker group")
        seen.add(name)
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        replicas = group.get("replicas", low)
        if isinstance(low, int) and isinstance(high, int) and low > high:
            errors.append(f"{where} {at}: minReplicas {low} is above maxReplicas {high}")
        elif isinstance(replicas, int) and isinstance(low, int) and isinstance(high, int):
            if not low <= replicas <= high:
                errors.append(f"{where} {at}.replicas: {replicas} is outside [{low}, {high}]")
        if not (group.get("template") or {}).get("spec", {}).get("containers"):
            errors.append(f"{where} {at}.template.spec.containers: needs at least one container")
    return errors


def _serve_config_errors(where: str, text: Any) -> list[str]:
    path = "$.spec.serveConfigV2"
    if not isinstance(text, str):
        return []  # the schema reports the type
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"{where} {path}: not YAML ({exc})"]
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:  # Ray Serve not installed here: the operator and Serve will check it
        return []
    check = getattr(ServeDeploySchema, "model_validate", None) or ServeDeploySchema.parse_obj
    try:
        check(config)
    except Exception as exc:  # pydantic's ValidationError, whichever pydantic Ray uses
        details = getattr(exc, "errors", None)
        if callable(details):
            return [
                f"{where} {path} {'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in details()
            ]
        return [f"{where} {path}: {exc}"]
    return []


def _retry_rules(where: str, spec: dict[str, Any], mode: str) -> list[str]:
    """backoffLimit as the operator's ValidateRayJobSpec reads it (KubeRay v1.7.0): each retry needs a cluster
    of its own and a fresh submission."""
    limit = spec.get("backoffLimit")
    if not isinstance(limit, int) or limit == 0:
        return []  # absent, zero or the wrong type (the schema reports that)
    path = f"{where} $.spec.backoffLimit"
    if limit < 0:
        return [f"{path}: must be >= 0, got {limit}"]
    if mode == "InteractiveMode":
        return [f"{path}: retries are not allowed in InteractiveMode"]
    if spec.get("clusterSelector"):
        return [f"{path}: retries are not allowed with clusterSelector (an existing RayCluster)"]
    return []


def _kuberay_errors(obj: dict[str, Any]) -> list[str]:
    where, kind, spec = _where(obj), obj.get("kind"), obj.get("spec") or {}
    errors = []
    if kind == "RayJob":
        if spec.get("rayClusterSpec"):
            errors += _cluster_rules(where, "$.spec.rayClusterSpec", spec["rayClusterSpec"])
        elif not spec.get("clusterSelector"):
            errors.append(f"{where} $.spec: needs rayClusterSpec or clusterSelector")
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"):
            errors.append(f"{where} $.spec.submissionMode: unknown mode '{mode}'")
        if mode != "InteractiveMode" and not str(spec.get("entrypoint", "")).strip():
            errors.append(f"{where} $.spec.entrypoint: empty; KubeRay would have nothing to submit")
        for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
            if field in spec and isinstance(spec[field], int) and spec[field] <= 0:
                errors.append(f"{where} $.spec.{field}: must be a positive number of seconds")
        if spec.get("ttlSecondsAfterFinished", 0) and not spec.get("shutdownAfterJobFinishes"):
            errors.append(
                f"{where} $.spec.ttlSecondsAfterFinished: only allowed with shutdownAfterJobFinishes: true"
            )
        errors += _retry_rules(where, spec, mode)
    elif kind == "RayService":
        errors += _cluster_rules(where, "$.spec.rayClusterConfig", spec.get("rayClusterConfig") or {})
        errors += _serve_config_errors(where, spec.get("serveConfigV2"))
    return errors


# -------------------------------------------------------------------------------------- our policy


def _walk(node: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def inline_secrets(obj: dict[str, Any]) -> list[str]:
    """Env vars that look like credentials but carry a literal value instead of a Secret reference; and
    Secret objects with data, which belong in the cluster, not in rendered or committed manifests."""
    where = _where(obj)
    errors = []
    if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
        errors.append(
            f"{where} $.data: Secrets with values must not be rendered or committed; create them on the cluster"
        )
    for path, node in _walk(obj):
        if path.endswith(".env") and isinstance(node, list):
            for i, var in enumerate(node):
                if (
                    isinstance(var, dict)
                    and SECRET_NAME.search(str(var.get("name", "")))
                    and var.get("value")
                ):
                    errors.append(
                        f"{where} {path}[{i}]: {var['name']} has a literal value; use valueFrom.secretKeyRef"
                    )
    return errors


# ------------------------------------------------------------------------------------------ public


def validate(
    obj: dict[str, Any], k8s_version: str = K8S_VERSION, allow_unknown_kinds: bool = False
) -> list[str]:
    """Problems with one manifest (empty = valid). Kinds without a schema here (other CRDs such as a
    PodMonitor) are an error unless `allow_unknown_kinds`, in which case only their shape is checked; so are
    core kinds when kubernetes-validate (a dev dependency) is not installed."""
    if not isinstance(obj, dict):
        return [f"?/? $: a manifest must be a mapping, got {type(obj).__name__}"]
    where = _where(obj)
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not api_version or not kind:
        return [f"{where} $: needs apiVersion and kind"]
    validator = crd_validator(api_version, kind) or core_validator(api_version, kind, k8s_version)
    if validator is not None:
        errors = _schema_errors(validator, obj)
    elif allow_unknown_kinds or (not schemas.HAVE_CORE_SCHEMAS and "ray.io/" not in api_version):
        errors = []  # shape, metadata and policy checks only
    else:
        return [f"{where} $: no schema for {kind} ({api_version}) here; cannot validate it"]
    errors += _metadata_errors(obj)
    errors += _kuberay_errors(obj)
    errors += inline_secrets(obj)
    return errors


def validate_all(
    objs: Iterable[dict[str, Any]], k8s_version: str = K8S_VERSION, allow_unknown_kinds: bool = False
) -> list[str]:
    errors: list[str] = []
    for obj in objs:
        errors += validate(obj, k8s_version, allow_unknown_kinds)
    return errors
