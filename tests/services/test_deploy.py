"""The workflow's deploy step: serve the winner, wait until healthy, ask one Shapes question over HTTP."""

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
