"""`mm1 submit --k8s` against a stand-in API server: what is applied, in which order, how, and the follow."""

from __future__ import annotations

import pytest
from k8s_workflows import make_workflow

from mm1.k8s.render import render_job, render_service
from mm1.k8s.submit import K8sError, apply_service, load_api_client, submit_k8s

RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
SUCCEEDED = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
FAILED = {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "step pretrain failed"}
INITIALIZING = {"jobDeploymentStatus": "Initializing"}

CM_PATH = "/api/v1/namespaces/ml/configmaps/mm1-test-workflow"
JOB_PATH = "/apis/ray.io/v1/namespaces/ml/rayjobs/mm1-test"


def submit(api_client, wf_text=None, **kwargs):
    wf, text = wf_text or make_workflow()
    lines: list[str] = []
    status = submit_k8s(
        wf, text, api_client=api_client, poll_s=0.01, timeout_s=20, log=lines.append, **kwargs
    )
    return status, lines


def test_applies_configmap_then_rayjob_server_side_and_follows_to_success(api_server):
    state, api_client = api_server
    state.rayjob_statuses = [INITIALIZING, RUNNING, RUNNING, SUCCEEDED]
    status, lines = submit(api_client)

    writes = state.writes()
    assert [(r.method, r.path) for r in writes] == [("PATCH", CM_PATH), ("PATCH", JOB_PATH)]
    for request in writes:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query["fieldManager"] == ["mm1"]
        assert request.query["force"] == ["true"]
    wf, text = make_workflow()
    configmap, rayjob = render_job(wf, text)
    assert writes[0].body == configmap and writes[1].body == rayjob
    # The RayJob was checked for before anything was written, and followed afterwards.
    assert state.requests.index(writes[0]) > next(
        i for i, r in enumerate(state.requests) if r.method == "GET" and r.path == JOB_PATH
    )
    assert status["jobStatus"] == "SUCCEEDED"
    progress = [line for line in lines if line.startswith("RayJob ml/mm1-test:")]
    assert progress == [
        "RayJob ml/mm1-test: deployment Initializing, job -",
        "RayJob ml/mm1-test: deployment Running, job RUNNING",
        "RayJob ml/mm1-test: deployment Complete, job SUCCEEDED",
    ]


def test_no_follow_returns_after_applying(api_server):
    state, api_client = api_server
    state.rayjob_statuses = [RUNNING]
    submit(api_client, follow=False)
    assert [r.path for r in state.writes()] == [CM_PATH, JOB_PATH]
    assert [r.path for r in state.requests if r.method == "GET" and r.path == JOB_PATH] == [JOB_PATH]


def test_failed_job_raises_with_kuberay_message(api_server):
    state, api_client = api_server
    state.rayjob_statuses = [RUNNING, FAILED]
    with pytest.raises(K8sError, match="job FAILED: step pretrain failed"):
        submit(api_client)


def test_finished_job_of_the_same_name_is_deleted_before_the_new_one(api_server):
    state, api_client = api_server
    state.objects[JOB_PATH] = {"kind": "RayJob", "metadata": {"name": "mm1-test"}, "status": SUCCEEDED}
    state.rayjob_statuses = [SUCCEEDED]
    status, lines = submit(api_client)
    assert [(r.method, r.path) for r in state.writes()] == [
        ("DELETE", JOB_PATH),
        ("PATCH", CM_PATH),
        ("PATCH", JOB_PATH),
    ]
    assert any("deleted the finished RayJob" in line for line in lines)


def test_a_running_job_is_followed_not_replaced(api_server):
    state, api_client = api_server
    state.objects[JOB_PATH] = {"kind": "RayJob", "metadata": {"name": "mm1-test"}, "status": RUNNING}
    state.rayjob_statuses = [RUNNING, SUCCEEDED]
    status, lines = submit(api_client)
    assert state.writes() == []
    assert status["jobStatus"] == "SUCCEEDED"
    assert any("kubectl -n ml delete rayjob mm1-test" in line for line in lines)


def test_a_job_kuberay_is_retrying_is_followed_through_its_new_attempt(api_server):
    # After a lost head pod KubeRay retries on a new cluster (backoffLimit); submitting again meanwhile must
    # not delete that attempt.
    state, api_client = api_server
    retrying = {"jobDeploymentStatus": "Retrying", "jobStatus": "RUNNING", "failed": 1}
    state.objects[JOB_PATH] = {"kind": "RayJob", "metadata": {"name": "mm1-test"}, "status": retrying}
    state.rayjob_statuses = [retrying, retrying, INITIALIZING, RUNNING, SUCCEEDED]  # checked, then followed
    status, lines = submit(api_client)
    assert state.writes() == []
    assert status["jobStatus"] == "SUCCEEDED"
    progress = [line for line in lines if line.startswith("RayJob ml/mm1-test:")]
    assert progress[0] == "RayJob ml/mm1-test: deployment Retrying, job RUNNING"
    assert progress[-1] == "RayJob ml/mm1-test: deployment Complete, job SUCCEEDED"


def test_cluster_without_kuberay_gets_a_clear_error(api_server):
    state, api_client = api_server
    state.serve_kuberay = False
    with pytest.raises(K8sError, match=r"does not serve RayJob \(ray\.io/v1\).*KubeRay operator"):
        submit(api_client)
    assert state.writes() == []


def test_forbidden_apply_names_the_object(api_server):
    state, api_client = api_server
    state.forbid = "/apis/ray.io/"
    with pytest.raises(K8sError, match="forbidden to apply RayJob ml/mm1-test"):
        submit(api_client)


def test_invalid_manifests_never_reach_the_cluster(api_server):
    state, api_client = api_server
    wf, text = make_workflow(overrides=("cluster.namespace=Not_A_Namespace",))
    with pytest.raises(K8sError, match=r"(?s)invalid:.*\$\.metadata\.namespace"):
        submit(api_client, (wf, text))
    assert state.requests == []


def test_apply_service_waits_until_ready(api_server):
    state, api_client = api_server
    wf, _ = make_workflow()
    path = "/apis/ray.io/v1/namespaces/ml/rayservices/mm1-test-serve"
    lines: list[str] = []

    import threading

    def become_ready():
        # The operator marks the service Ready a moment after it was applied.
        while path not in state.objects:
            threading.Event().wait(0.01)
        state.objects[path]["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}

    helper = threading.Thread(target=become_ready)
    helper.start()
    url = apply_service(wf, "/mnt/runs/mm1-test/select/winner", api_client, log=lines.append, poll_s=0.01)
    helper.join()
    (write,) = state.writes()
    assert (write.method, write.path, write.query["fieldManager"]) == ("PATCH", path, ["mm1"])
    assert write.body == render_service(wf, "/mnt/runs/mm1-test/select/winner")
    assert url == "http://mm1-test-serve-serve-svc.ml.svc.cluster.local:8000"
    assert lines[-1] == "RayService ml/mm1-test-serve is ready"


def test_no_kubeconfig_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(K8sError, match=r"no Kubernetes credentials.*missing-kubeconfig.*KUBECONFIG"):
        load_api_client()


def test_kubeconfig_is_used_when_present(monkeypatch, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        """
apiVersion: v1
kind: Config
current-context: test
clusters: [{name: c, cluster: {server: "https://10.1.2.3:6443"}}]
users: [{name: u, user: {}}]
contexts: [{name: test, context: {cluster: c, user: u}}]
"""
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert load_api_client().configuration.host == "https://10.1.2.3:6443"
