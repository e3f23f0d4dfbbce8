"""JSON-schema validators for Kubernetes objects, built offline from data files.

- KubeRay CRDs (mm1/schemas/kuberay, v1.7.0): their `openAPIV3Schema` is OpenAPI 3.0 with Kubernetes
  extensions. We turn it into a draft-4 JSON schema the way the API server reads it: `nullable` admits null,
  objects with declared properties reject unknown fields (what `kubectl apply --server-side` does with
  fieldValidation=Strict instead of silently pruning them), `x-kubernetes-list-type: map|set` lists must not
  repeat their keys, and int32/int64 formats are range-checked. CEL rules (`x-kubernetes-validations`) need a
  CEL engine and are left to the API server.
- Core objects (ConfigMap, PVC, RBAC, ...): the strict schemas bundled with `kubernetes_validate`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from functools import cache, lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import jsonschema
import referencing
import yaml
from referencing.jsonschema import DRAFT202012

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# A Kubernetes version every kubernetes-validate >= 1.30 bundles; KubeRay v1.7.0 supports it.
K8S_VERSION = "1.30"

CRD_FILES = {
    ("ray.io/v1", "RayJob"): "kuberay/ray.io_rayjobs.yaml",
    ("ray.io/v1", "RayService"): "kuberay/ray.io_rayservices.yaml",
}
COMPOSE_SPEC = "compose/compose-spec.json"
# kubernetes-validate is a dev dependency (its schemas are ~100 MB): without it, core objects skip the schema
# layer (the CRDs, which matter most, do not need it).
HAVE_CORE_SCHEMAS = importlib.util.find_spec("kubernetes_validate") is not None

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1 MB+ each: libyaml is 5x faster


def schema_file(relative: str) -> Traversable:
    return resources.files("mm1") / "schemas" / relative


def compose_spec() -> dict[str, Any]:
    return json.loads(schema_file(COMPOSE_SPEC).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ CRDs


def openapi_to_jsonschema(node: Any) -> Any:
    """A copy of an OpenAPI v3 structural schema with the API server's reading made explicit."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: openapi_to_jsonschema(value) for key, value in node.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict) -> Iterator[Any]:
    """`x-kubernetes-list-type`: items of a `set` are unique; items of a `map` are unique by their keys
    (a key left out counts as its default, e.g. a port's protocol is TCP)."""
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        for i, item in enumerate(instance):
            if item in instance[:i]:
                yield jsonschema.ValidationError(f"{item!r} is repeated in a list that is a set", path=[i])
        return
    if list_type != "map":
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    defaults = {k: v.get("default") for k, v in schema.get("items", {}).get("properties", {}).items()}
    first: dict[tuple, int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        ident = tuple(item.get(k, defaults.get(k)) for k in keys)
        if ident in first:
            shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, ident, strict=True))
            yield jsonschema.ValidationError(
                f"duplicate entry ({shown}): also at index {first[ident]}; entries are keyed by {', '.join(keys)}",
                path=[i],
            )
        else:
            first[ident] = i


_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type})

FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value: Any) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: Any) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@cache
def crd_validator(api_version: str, kind: str) -> Any | None:
    """A validator for one served version of a copied CRD, or None when we hold no CRD for it."""
    relative = CRD_FILES.get((api_version, kind))
    if relative is None:
        return None
    crd = yaml.load(schema_file(relative).read_text(encoding="utf-8"), Loader=_Loader)
    version = api_version.split("/", 1)[1]
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema = openapi_to_jsonschema(served["schema"]["openAPIV3Schema"])
            return _Validator(schema, format_checker=FORMATS)
    return None


# ------------------------------------------------------------------------------------- core objects


def _bundled_versions() -> dict[str, Traversable]:
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    found = {}
    for entry in root.iterdir():
        match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+-local-strict", entry.name)
        if match:
            found[f"{match[1]}.{match[2]}"] = entry
    return found


def _version_key(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


@cache
def core_schema_dir(version: str = K8S_VERSION) -> Traversable:
    """The newest bundled strict schema set that is not newer than `version`."""
    bundled = _bundled_versions()
    usable = [v for v in bundled if _version_key(v) <= _version_key(version)]
    if not usable:
        raise LookupError(
            f"kubernetes-validate bundles no schemas for Kubernetes {version} or older "
            f"(it has {', '.join(sorted(bundled, key=_version_key))})"
        )
    return bundled[max(usable, key=_version_key)]


@lru_cache(maxsize=4)
def _core_registry(version: str) -> referencing.Registry:
    definitions = json.loads((core_schema_dir(version) / "_definitions.json").read_text(encoding="utf-8"))
    return referencing.Resource.from_contents(definitions, default_specification=DRAFT202012) @ (
        referencing.Registry()
    )


@cache
def core_validator(api_version: str, kind: str, version: str = K8S_VERSION) -> Any | None:
    """A validator for a built-in kind, or None when kubernetes-validate has no schema for it (a CRD) or is
    not installed."""
    if not HAVE_CORE_SCHEMAS:
        return None
    # rbac.authorization.k8s.io/v1 -> rbac-v1, apps/v1 -> apps-v1, v1 -> v1 (kubernetes-validate's naming)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = core_schema_dir(version) / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, registry=_core_registry(version))
