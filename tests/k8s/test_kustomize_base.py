"""The kustomize base in k8s/: every object is valid, and it fits what the renderer produces."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from k8s_workflows import make_workflow

from mm1.config import ClusterConfig
from mm1.k8s.dashboards import overview_configmap, ray_dashboard_configmaps
from mm1.k8s.render import render_all
from mm1.k8s.validate import has_schema, validate, validate_all

BASE = Path(__file__).resolve().parents[2] / "k8s"


def base_objects() -> list[dict]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    objs = []
    for resource in kustomization["resources"]:
        objs += [doc for doc in yaml.safe_load_all((BASE / resource).read_text()) if doc]
    return objs


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def test_every_file_in_k8s_is_listed_in_the_kustomization():
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    on_disk = {str(p.relative_to(BASE)) for p in BASE.rglob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed


def test_every_object_validates_and_only_the_podmonitor_lacks_a_schema():
    objs = base_objects()
    assert validate_all(objs, allow_unknown_kinds=True) == []
    unknown = [o["kind"] for o in objs if not has_schema(o)]
    assert unknown == ["PodMonitor"]
    for obj in objs:  # CRD kinds are still checked for shape
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_build_is_valid_and_all_in_the_mm1_namespace():
    out = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, check=True
    ).stdout
    objs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert len(objs) == len(base_objects())
    assert validate_all(objs, allow_unknown_kinds=True) == []
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == ClusterConfig().namespace
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mm1"


def test_base_provides_what_the_rendered_pods_reference():
    defaults = ClusterConfig()
    objs = base_objects()
    assert [o["metadata"]["name"] for o in by_kind(objs, "Namespace")] == [defaults.namespace]
    assert defaults.service_account in [o["metadata"]["name"] for o in by_kind(objs, "ServiceAccount")]
    (pvc,) = by_kind(objs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == defaults.pvc
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # head and workers write the same run folder


def rules_for(role: dict, group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in role["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            verbs |= set(rule["verbs"])
    return verbs


def test_runner_role_lets_the_job_deploy_a_rayservice_and_nothing_about_secrets():
    objs = base_objects()
    role = next(o for o in by_kind(objs, "Role") if o["metadata"]["name"] == "mm1-runner")
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["roleRef"]["name"] == "mm1-runner"
    assert binding["subjects"][0]["name"] == ClusterConfig().service_account
    assert {"get", "create", "patch"} <= rules_for(role, "ray.io", "rayservices")  # server-side apply
    assert {"get", "create", "patch"} <= rules_for(role, "", "configmaps")
    assert {"get", "list"} <= rules_for(role, "", "pods")
    assert rules_for(role, "", "secrets") == set()


def test_submitter_role_covers_submit_k8s():
    objs = base_objects()
    role = next(o for o in by_kind(objs, "Role") if o["metadata"]["name"] == "mm1-submitter")
    # apply = patch (create on first apply), a finished job of the same name is deleted, status is read.
    assert {"get", "patch", "create", "delete"} <= rules_for(role, "ray.io", "rayjobs")
    assert {"get", "patch", "create"} <= rules_for(role, "", "configmaps")


def test_podmonitor_selects_the_rendered_ray_pods_on_named_ports():
    (monitor,) = by_kind(base_objects(), "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    wf, text = make_workflow()
    _, rayjob, service = render_all(wf, text, "/mnt/runs/x")
    for obj in (rayjob, service):
        cluster = obj["spec"].get("rayClusterSpec") or obj["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]["template"]
        templates = [head] + [g["template"] for g in cluster["workerGroupSpecs"]]
        for template in templates:
            # KubeRay adds ray.io/is-ray-node=yes to every Ray pod; the rest must come from our labels.
            labels = {**template["metadata"]["labels"], "ray.io/is-ray-node": "yes"}
            assert selector.items() <= labels.items()
        head_ports = {p["name"] for p in head["spec"]["containers"][0]["ports"]}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= head_ports
    # Only Ray pods (KubeRay's label) have metrics ports; the job submitter pod must not be a target.
    assert selector["ray.io/is-ray-node"] == "yes"


def test_committed_dashboard_configmap_is_generated_from_mm1_k8s_dashboards():
    committed = [
        d for d in yaml.safe_load_all((BASE / "monitoring" / "grafana-dashboards.yaml").read_text()) if d
    ]
    assert committed == [overview_configmap()]
    assert validate(committed[0]) == []


def test_ray_generated_dashboards_fit_in_configmaps():
    maps = ray_dashboard_configmaps("monitoring")
    assert {m["metadata"]["name"] for m in maps} >= {"ray-dashboard-default", "ray-dashboard-serve"}
    for cm in maps:
        assert validate(cm) == []
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        size = sum(len(v.encode()) for v in cm["data"].values())
        assert size < 1_000_000, (cm["metadata"]["name"], size)  # the API server's object limit is ~1 MiB
