"""A lost head pod must not start training over: the RayJob retries on a new cluster (backoffLimit) with an
entrypoint that is the same on every render and every attempt, pointed at the same storage root, which lives
on the PVC or the object store, never on the head's own disk."""

from __future__ import annotations

import pytest
from k8s_workflows import make_workflow, pod_templates

from mm1.config import ClusterConfig, ConfigError, loads
from mm1.k8s.pods import RenderError
from mm1.k8s.render import ENTRYPOINT, dump_all, render_job
from mm1.k8s.validate import validate


def test_rayjob_retries_on_a_new_cluster_by_default():
    wf, text = make_workflow()
    _, rayjob = render_job(wf, text)
    spec = rayjob["spec"]
    assert spec["backoffLimit"] == ClusterConfig().backoff_limit == 2
    # Retries need a cluster of the job's own (KubeRay refuses backoffLimit with clusterSelector) and a fresh
    # submission id per attempt (no fixed jobId).
    assert "rayClusterSpec" in spec and "clusterSelector" not in spec and "jobId" not in spec
    assert spec["submissionMode"] == "K8sJobMode"
    assert validate(rayjob) == []


def test_retries_come_from_the_cluster_section():
    wf, text = make_workflow(overrides=("cluster.backoff_limit=5",))
    assert render_job(wf, text)[1]["spec"]["backoffLimit"] == 5
    wf, text = make_workflow(overrides=("cluster.backoff_limit=0",))
    assert render_job(wf, text)[1]["spec"]["backoffLimit"] == 0
    with pytest.raises(ConfigError, match=r"cluster\.backoff_limit: must be >= 0"):
        make_workflow(overrides=("cluster.backoff_limit=-1",))


@pytest.mark.parametrize("root", ["runs", "s3://bucket/runs"], ids=["pvc", "s3"])
def test_two_renders_of_the_same_workflow_are_identical(root):
    # Two separate loads, as two `mm1 submit --k8s wf.yaml` would do: nothing time- or run-dependent.
    first = render_job(*make_workflow(root=root))
    second = render_job(*make_workflow(root=root))
    assert first == second
    assert dump_all(first) == dump_all(second)
    assert first[1]["spec"]["entrypoint"] == second[1]["spec"]["entrypoint"] == ENTRYPOINT


@pytest.mark.parametrize(
    "root, expected", [("runs", "/mnt/runs"), ("s3://bucket/runs", "s3://bucket/runs")], ids=["pvc", "s3"]
)
def test_the_entrypoint_runs_the_mounted_file_against_the_same_storage_root(root, expected):
    wf, text = make_workflow(root=root)
    configmap, rayjob = render_job(wf, text)
    # The entrypoint names the file the ConfigMap puts at /etc/mm1 in the head pod, where the driver runs.
    mounted = "/etc/mm1/workflow.yaml"
    assert ENTRYPOINT.endswith(f" {mounted}")
    head = pod_templates(rayjob)[0]["spec"]
    volume = next(
        v for v in head["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    )
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mounted == f"{mount['mountPath']}/workflow.yaml"
    effective = loads(configmap["data"]["workflow.yaml"])
    # Same run name + same storage root = the same run folder: finished steps are skipped, training resumes.
    assert (effective.storage.root, effective.run_name) == (expected, wf.run_name)
    assert rayjob["spec"]["metadata"]["run_dir"] == f"{expected}/{wf.run_name}"


def test_nothing_of_the_run_lives_on_a_pods_own_disk():
    wf, text = make_workflow()
    _, rayjob = render_job(wf, text)
    for template in pod_templates(rayjob)[:-1]:  # head and workers
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert not any("emptyDir" in v or "hostPath" in v for v in volumes.values())
        mounts = {m["mountPath"]: m["name"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/mnt/runs"]]["persistentVolumeClaim"]["claimName"] == "mm1-runs"


def test_finished_jobs_are_kept_for_the_ttl_only_when_kuberay_allows_it():
    wf, text = make_workflow(overrides=("cluster.ttl_seconds_after_finished=600",))
    spec = render_job(wf, text)[1]["spec"]
    assert (spec["ttlSecondsAfterFinished"], spec["shutdownAfterJobFinishes"]) == (600, True)
    assert "ttlSecondsAfterFinished" not in render_job(*make_workflow())[1]["spec"]
    wf, text = make_workflow(
        overrides=("cluster.ttl_seconds_after_finished=600", "cluster.shutdown_after_job_finishes=false")
    )
    with pytest.raises(
        RenderError, match=r"cluster\.ttl_seconds_after_finished: .*shutdown_after_job_finishes"
    ):
        render_job(wf, text)
