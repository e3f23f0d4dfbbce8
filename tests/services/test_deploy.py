"""The workflow's deploy step: serve the winner, gate it (train-serve parity), ask one Shapes question over
HTTP; a redeploy that fails the gate leaves the previous endpoint serving."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import SERVE_HOST

from mm1.config import loads
from services.client import chat

WORKFLOW = """
name: deploy-test
deploy:
  host: {host}
  port: {port}
  model_name: shapes-tiny
  max_batch_size: 4
  keep_serving: false
"""


@pytest.fixture(scope="module")
def deployed(ray_session, serve_port, tiny_checkpoint, tmp_path_factory):
    from ray import serve

    from services.deploy import deploy_winner

    wf = loads(WORKFLOW.format(host=SERVE_HOST, port=serve_port))
    out = tmp_path_factory.mktemp("deploy-step")
    lines: list[str] = []
    endpoint = deploy_winner(wf, {"checkpoint": tiny_checkpoint, "candidate": "c0"}, out, log=lines.append)
    yield endpoint, out, lines, serve_port
    serve.shutdown()


def test_deploy_winner_returns_and_writes_the_endpoint(deployed):
    endpoint, out, lines, port = deployed
    assert endpoint["url"] == f"http://{SERVE_HOST}:{port}/v1"
    assert endpoint["model"] == "shapes-tiny"
    assert json.loads((out / "endpoint.json").read_text()) == endpoint
    models = httpx.get(f"{endpoint['url']}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["shapes-tiny"]
    assert any("healthy" in line for line in lines)


def test_deploy_winner_asked_a_fresh_shapes_question(deployed):
    endpoint, out, lines, _ = deployed
    sample = endpoint["sample"]
    assert sample is not None, lines
    assert sample["question"].endswith("?") or sample["question"].endswith(".")
    assert isinstance(sample["answer"], str) and sample["truth"]
    assert (out / "sample.png").is_file()
    assert any(repr(sample["question"]) in line for line in lines)


def test_client_chat_plain_and_streamed_agree(deployed):
    endpoint, out, _, _ = deployed
    image = str(out / "sample.png")
    pieces: list[str] = []
    plain = chat("what shape is it?", [image], endpoint["url"], temperature=0, max_tokens=8)
    streamed = chat(
        "what shape is it?",
        [image],
        endpoint["url"],
        stream=True,
        temperature=0,
        max_tokens=8,
        on_text=pieces.append,
    )
    assert streamed == plain
    assert "".join(pieces) == streamed


def test_deploy_winner_passed_the_parity_gate_and_recorded_it(deployed):
    endpoint, out, lines, _ = deployed
    parity = endpoint["parity"]
    assert parity["prompts"] == 3 and parity["tokens"] > 0
    assert parity["dtype"] == "float32" and parity["tolerance"] == 1e-3
    assert 0 <= parity["max_abs_logprob_diff"] < parity["tolerance"]
    assert json.loads((out / "endpoint.json").read_text())["parity"] == parity
    assert any("parity gate passed" in line for line in lines)


def test_a_skewed_redeploy_fails_the_gate_and_the_previous_endpoint_keeps_serving(
    deployed, tiny_checkpoint, tmp_path, monkeypatch
):
    """The training-side reference sees other pixels than the replica (another image mean): the candidate is
    refused and deleted; the application on the public route is the previous one, untouched."""
    from ray import serve

    from services import parity
    from services.deploy import candidate_app, deploy_winner

    endpoint, _, _, port = deployed
    loaded = parity.Reference.__init__

    def skewed(self, *args, **kwargs):
        loaded(self, *args, **kwargs)
        self.processor.image_mean = (0.0, 0.0, 0.0)

    monkeypatch.setattr(parity.Reference, "__init__", skewed)
    wf = loads(WORKFLOW.format(host=SERVE_HOST, port=port))
    before = serve.status().applications["deploy-test"].last_deployed_time_s
    lines: list[str] = []
    with pytest.raises(
        parity.ParityError, match=r"train-serve parity: prompt '\w+@\d+'.*position \d+"
    ) as info:
        deploy_winner(wf, {"checkpoint": tiny_checkpoint}, tmp_path, log=lines.append)
    assert "training-side" in str(info.value)
    applications = serve.status().applications
    assert candidate_app("deploy-test")[0] not in applications
    assert applications["deploy-test"].status == "RUNNING"
    assert applications["deploy-test"].last_deployed_time_s == before  # not redeployed
    assert any("candidate" in line for line in lines) and not (tmp_path / "endpoint.json").exists()
    answer = chat("what shape is it?", [], endpoint["url"], temperature=0, max_tokens=4)
    assert isinstance(answer, str)


def test_deploying_on_another_port_than_serve_runs_on_fails_fast(deployed, tiny_checkpoint):
    from services.deploy import start_app
    from services.settings import ServeSettings

    _, _, _, port = deployed
    with pytest.raises(RuntimeError, match=f"HTTP port {port}"):
        start_app(ServeSettings(checkpoint=tiny_checkpoint), "other", SERVE_HOST, port + 1)


def test_disabled_deploy_serves_nothing(tmp_path):
    from services.deploy import deploy_winner

    wf = loads(WORKFLOW.format(host=SERVE_HOST, port=8000) + "  enabled: false\n")
    endpoint = deploy_winner(wf, {"checkpoint": "/nonexistent"}, tmp_path, log=lambda _: None)
    assert endpoint == {"url": "", "model": "shapes-tiny", "sample": None}


def test_a_rayservice_is_switched_only_to_a_checkpoint_that_passed_the_gate(
    deployed, tiny_checkpoint, tmp_path, monkeypatch
):
    """On Kubernetes the deploy step gates the winner on the RayJob's own cluster before it writes the
    checkpoint into the RayService. The Kubernetes API cannot exist here: `apply_service` is replaced by a
    recorder (the RayService it would apply is validated against KubeRay's CRD in tests/k8s)."""
    from ray import serve

    import mm1.k8s.submit
    from mm1.workflow.backends import KubeRay
    from services import parity
    from services.deploy import candidate_app

    _, _, _, port = deployed
    applied: list[str] = []
    monkeypatch.setattr(
        mm1.k8s.submit,
        "apply_service",
        lambda wf, checkpoint, log: applied.append(checkpoint) or "http://svc",
    )
    wf = loads(WORKFLOW.format(host=SERVE_HOST, port=port))
    lines: list[str] = []
    result = KubeRay().deploy(wf, {"checkpoint": tiny_checkpoint}, tmp_path, log=lines.append)
    assert applied == [tiny_checkpoint] and result["url"] == "http://svc"
    assert result["parity"]["tokens"] > 0 and any("before the RayService is switched" in x for x in lines)
    assert candidate_app("deploy-test")[0] not in serve.status().applications  # taken down after the gate

    loaded = parity.Reference.__init__

    def skewed(self, *args, **kwargs):
        loaded(self, *args, **kwargs)
        self.processor.image_mean = (0.0, 0.0, 0.0)

    monkeypatch.setattr(parity.Reference, "__init__", skewed)
    with pytest.raises(parity.ParityError, match="train-serve parity"):
        KubeRay().deploy(wf, {"checkpoint": tiny_checkpoint}, tmp_path, log=lines.append)
    assert applied == [tiny_checkpoint]  # the failing checkpoint never reached the RayService
    assert candidate_app("deploy-test")[0] not in serve.status().applications
