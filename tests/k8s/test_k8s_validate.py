"""Rendered manifests validate against the KubeRay v1.7.0 CRDs and the core schemas; broken ones do not,
and the error names the object and the JSON path."""

from __future__ import annotations

import copy

import pytest
import yaml
from k8s_workflows import GPU_CLUSTER, make_workflow

from mm1.k8s.render import render_all
from mm1.k8s.schemas import core_schema_dir, crd_validator, openapi_to_jsonschema
from mm1.k8s.validate import has_schema, validate, validate_all

CHECKPOINT = "/mnt/runs/x/select/winner"


def rendered(**kwargs) -> list[dict]:
    wf, text = make_workflow(**kwargs)
    return render_all(wf, text, CHECKPOINT)


WORKFLOWS = {
    "cpu-pvc": {},
    "two-gpu-groups-s3": {
        "name": "MM1_3B paper recipe",
        "root": "s3://bucket/runs",
        "cluster": GPU_CLUSTER,
        "deploy": "  gpus_per_replica: 0.5\n  autoscaling: {min_replicas: 1, max_replicas: 8}\n  api_key_env: MM1_KEY",
        "overrides": ("cluster.storage_secret=s3-creds",),
    },
    "no-token-no-deadlines": {
        "overrides": (
            "cluster.ray_token_secret=",
            "cluster.active_deadline_seconds=0",
            "cluster.pre_running_deadline_seconds=0",
        )
    },
    "head-only": {"cluster": "  worker_groups: []\n"},
}


@pytest.mark.parametrize("kwargs", WORKFLOWS.values(), ids=WORKFLOWS.keys())
def test_rendered_manifests_are_valid(kwargs):
    objs = rendered(**kwargs)
    assert [o["kind"] for o in objs] == ["ConfigMap", "RayJob", "RayService"]
    assert all(has_schema(o) for o in objs)
    assert validate_all(objs) == []


def test_the_two_gpu_group_job_really_has_two_gpu_groups():
    _, rayjob, service = rendered(**WORKFLOWS["two-gpu-groups-s3"])
    for cluster in (rayjob["spec"]["rayClusterSpec"], service["spec"]["rayClusterConfig"]):
        gpus = [
            g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
            for g in cluster["workerGroupSpecs"]
        ]
        assert gpus == ["8", "1"]


def test_preRunningDeadlineSeconds_is_a_v1_7_rayjob_field():
    properties = crd_validator("ray.io/v1", "RayJob").schema["properties"]["spec"]["properties"]
    assert properties["preRunningDeadlineSeconds"]["type"] == "integer"
    assert "activeDeadlineSeconds" in properties and "shutdownAfterJobFinishes" in properties
    # What a resumable job relies on: retries on a new cluster and clean-up after the end.
    assert properties["backoffLimit"]["type"] == "integer"
    assert properties["ttlSecondsAfterFinished"]["type"] == "integer"
    assert "authOptions" in properties["rayClusterSpec"]["properties"]


def mutate(path: str, value, obj: dict) -> dict:
    """A copy of `obj` with the dotted/indexed `path` set to `value` (None deletes it)."""
    obj = copy.deepcopy(obj)
    parts = [int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split(".")]
    node = obj
    for part in parts[:-1]:
        node = node[part]
    if value is None:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return obj


WORKER = "spec.rayClusterSpec.workerGroupSpecs[0]"
HEAD_BOX = "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]"

BROKEN_JOB = [
    ("spec.sepc", {}, "$.spec: Additional properties are not allowed ('sepc' was unexpected)"),
    (f"{WORKER}.maxReplicas", "four", f"$.{WORKER}.maxReplicas: 'four' is not of type 'integer'"),
    (f"{WORKER}.template.spec.containers[0].resources.limits.cpu", "lots", "is not a Kubernetes quantity"),
    ("spec.activeDeadlineSeconds", 2**40, "$.spec.activeDeadlineSeconds: 1099511627776 is not a 'int32'"),
    ("spec.activeDeadlineSeconds", -5, "activeDeadlineSeconds: must be a positive number of seconds"),
    (
        "spec.shutdownAfterJobFinishes",
        "yes",
        "$.spec.shutdownAfterJobFinishes: 'yes' is not of type 'boolean'",
    ),
    (f"{WORKER}.replicas", 9, f"$.{WORKER}.replicas: 9 is outside [1, 3]"),
    (
        "spec.rayClusterSpec.rayVersion",
        "2.49.0",
        "token auth (authOptions.mode=token) needs rayVersion >= 2.52.0",
    ),
    ("spec.submissionMode", "ShellMode", "$.spec.submissionMode: unknown mode 'ShellMode'"),
    ("spec.backoffLimit", -1, "$.spec.backoffLimit: must be >= 0, got -1"),
    ("spec.backoffLimit", "2", "$.spec.backoffLimit: '2' is not of type 'integer'"),
    ("spec.submissionMode", "InteractiveMode", "backoffLimit: retries are not allowed in InteractiveMode"),
    (
        "spec.clusterSelector",
        {"ray.io/cluster": "shared"},
        "backoffLimit: retries are not allowed with clusterSelector",
    ),
    ("spec.entrypoint", " ", "$.spec.entrypoint: empty"),
    ("metadata.name", "x" * 48, "$.metadata.name: KubeRay needs a DNS-1035 label of at most 47"),
    ("metadata.name", "9lives", "$.metadata.name: KubeRay needs a DNS-1035 label"),
    ("metadata.labels.team", "ml platform", "$.metadata.labels.team: label value 'ml platform'"),
    (
        f"{HEAD_BOX}.env[0]",
        {"name": "HF_TOKEN", "value": "hf_abc"},
        f"$.{HEAD_BOX}.env[0]: HF_TOKEN has a literal value",
    ),
    (f"{HEAD_BOX}.imagePullPolicy", None, None),  # optional: removing it is fine
]


@pytest.mark.parametrize(
    "path, value, expected", BROKEN_JOB, ids=[f"{p}={v!r}"[:60] for p, v, _ in BROKEN_JOB]
)
def test_broken_rayjob_is_reported_with_its_path(path, value, expected):
    rayjob = rendered()[1]
    errors = validate(mutate(path, value, rayjob))
    if expected is None:
        assert errors == []
    else:
        assert any(expected in e for e in errors), errors
        assert all(e.startswith("RayJob/") for e in errors)


def test_list_map_keys_must_be_unique():
    rayjob = rendered()[1]
    box = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    box["ports"].append({"containerPort": 8080, "name": "metrics-again"})  # protocol defaults to TCP
    box["env"].append({"name": "RAY_AUTH_MODE", "value": "disabled"})
    errors = validate(rayjob)
    assert any(
        "ports[5]: duplicate entry (containerPort=8080, protocol='TCP'): also at index 3" in e for e in errors
    ), errors
    last = len(box["env"]) - 1
    assert any(f"env[{last}]: duplicate entry (name='RAY_AUTH_MODE')" in e for e in errors), errors


def test_broken_serve_config_is_checked_with_ray_serves_own_schema():
    service = rendered()[2]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    config["applications"][0]["import_path"] = "no_module_separator"
    config["applications"][0]["deployments"] = [
        {"name": "Chat", "num_replicas": 2, "autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}
    ]
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    errors = validate(service)
    assert any("$.spec.serveConfigV2 applications.0.import_path" in e for e in errors), errors
    assert any("num_replicas is not allowed when autoscaling_config" in e for e in errors), errors
    service["spec"]["serveConfigV2"] = "applications: [unclosed"
    assert any("not YAML" in e for e in validate(service))


def test_rayservice_needs_its_cluster_config():
    service = mutate("spec.rayClusterConfig", None, rendered()[2])
    assert any("'rayClusterConfig' is a required property" in e for e in validate(service))


def test_core_objects_use_the_bundled_kubernetes_schemas():
    configmap = rendered()[0]
    broken = copy.deepcopy(configmap)
    broken["data"]["workflow.yaml"] = 3
    errors = validate(broken)
    assert errors == ["ConfigMap/mm1-test-workflow $.data.workflow.yaml: 3 is not of type 'string', 'null'"]
    assert any("'bogus' was unexpected" in e for e in validate(mutate("bogus", 1, configmap)))
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "runs"},
        "spec": {"accessModes": "ReadWriteMany", "resources": {"requests": {"storage": "1Ti"}}},
    }
    assert any("$.spec.accessModes" in e for e in validate(pvc))
    assert core_schema_dir().name == "v1.30.0-local-strict"


def test_secrets_with_values_are_refused():
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "ray-auth-token"},
        "stringData": {"auth_token": "x"},
    }
    assert any("must not be rendered or committed" in e for e in validate(secret))


def test_unknown_kinds_fail_unless_allowed_then_only_their_shape_is_checked():
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "ray"},
        "spec": {},
    }
    assert not has_schema(monitor)
    assert validate(monitor) == [
        "PodMonitor/ray $: no schema for PodMonitor (monitoring.coreos.com/v1) here; cannot validate it"
    ]
    assert validate(monitor, allow_unknown_kinds=True) == []
    assert validate({"kind": "PodMonitor", "metadata": {"name": "ray"}}, allow_unknown_kinds=True) == [
        "PodMonitor/ray $: needs apiVersion and kind"
    ]
    assert validate(mutate("metadata.name", "Bad_Name", monitor), allow_unknown_kinds=True)


def test_openapi_conversion_follows_the_api_servers_reading():
    schema = openapi_to_jsonschema(
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "nullable": True},
                "free": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {"k": {}},
                },
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert schema["properties"]["a"]["type"] == ["string", "null"]
    assert "additionalProperties" not in schema["properties"]["free"]
    assert schema["properties"]["map"]["additionalProperties"] == {"type": "string"}


def test_without_kubernetes_validate_core_objects_skip_only_the_schema(monkeypatch):
    # The image installs runtime dependencies only; submit and the deploy step still validate there.
    from mm1.k8s import schemas

    monkeypatch.setattr(schemas, "HAVE_CORE_SCHEMAS", False)
    schemas.core_validator.cache_clear()
    try:
        configmap, rayjob, service = rendered()
        assert validate_all([configmap, rayjob, service]) == []
        broken = copy.deepcopy(configmap)
        broken["data"]["workflow.yaml"] = 3
        assert validate(broken) == []  # no core schema to say so
        assert validate(mutate("metadata.name", "Bad_Name", configmap))  # metadata rules still apply
        assert validate(mutate("spec.sepc", {}, rayjob))  # CRDs need no kubernetes-validate
    finally:
        schemas.core_validator.cache_clear()
