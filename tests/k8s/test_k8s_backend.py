"""The KubeRay backend against the stand-in API server: the deploy step on cluster.backend=k8s applies a
RayService through mm1.workflow.backends, and `mm1 submit --k8s` applies the ConfigMap and the RayJob."""

from __future__ import annotations

import functools
import threading

from k8s_workflows import make_workflow

from mm1 import cli
from mm1.k8s import submit
from mm1.k8s.render import render_service
from mm1.workflow.rundir import RunDir
from mm1.workflow.runner import StepContext
from mm1.workflow.steps import run_deploy

SERVICE_PATH = "/apis/ray.io/v1/namespaces/ml/rayservices/mm1-test-serve"
WINNER = "/mnt/runs/mm1-test/select/winner"


def test_deploy_step_on_k8s_applies_a_rayservice(api_server, monkeypatch, tmp_path):
    state, api_client = api_server
    monkeypatch.setattr(
        submit, "apply_service", functools.partial(submit.apply_service, api_client=api_client, poll_s=0.01)
    )
    # The gate before the switch needs the winner served on this Ray (tests/services/test_deploy.py covers
    # it); this test is about the RayService the step applies.
    wf, _ = make_workflow(overrides=("deploy.parity_check=false",))
    assert wf.cluster.backend == "k8s"

    def become_ready():
        while SERVICE_PATH not in state.objects:
            threading.Event().wait(0.01)
        state.objects[SERVICE_PATH]["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}

    helper = threading.Thread(target=become_ready)
    helper.start()
    lines: list[str] = []
    ctx = StepContext(
        wf=wf,
        rundir=RunDir(str(tmp_path), wf.run_name),
        out=tmp_path / "deploy",
        upstream={"select": {"outputs": {"winner": {"checkpoint": WINNER, "candidate": "c0"}}}},
        log=lines.append,
    )
    result = run_deploy(ctx)
    helper.join()
    (write,) = state.writes()
    assert (write.method, write.path) == ("PATCH", SERVICE_PATH)
    assert write.body == render_service(wf, WINNER)
    url = "http://mm1-test-serve-serve-svc.ml.svc.cluster.local:8000"
    assert result.outputs == {
        "url": url,
        "model": wf.deploy.model_name or wf.name,
        "sample": None,
        "parity": None,
    }
    assert result.headline == {"endpoint": url}
    assert lines[-1] == "RayService ml/mm1-test-serve is ready"  # the step's log, not stdout


def test_submit_k8s_from_the_cli_goes_through_the_backend(api_server, monkeypatch, tmp_path, capsys):
    state, api_client = api_server
    monkeypatch.setattr(submit, "load_api_client", lambda: api_client)
    _, text = make_workflow()
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    assert cli.main(["submit", "--k8s", "--no-follow", str(path)]) == 0
    assert [(r.method, r.path) for r in state.writes()] == [
        ("PATCH", "/api/v1/namespaces/ml/configmaps/mm1-test-workflow"),
        ("PATCH", "/apis/ray.io/v1/namespaces/ml/rayjobs/mm1-test"),
    ]
    assert "applied RayJob ml/mm1-test" in capsys.readouterr().out
