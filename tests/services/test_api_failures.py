"""Generation failures, with the HTTP app in-process over a stub backend (no Ray): a failure before the
first token is an HTTP error object; one after it is reported in the stream, which still ends with [DONE]."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from mm1.model import MM1Processor
from services.api import create_api
from services.engine import StepOutput
from services.settings import ServeSettings


class StubBackend:
    def __init__(self, checkpoint: str, fail_after: int):
        self.settings = ServeSettings(checkpoint=checkpoint, model_name="stub")
        self.processor = MM1Processor.from_pretrained(checkpoint)
        self.context_length = 2048
        self.api_key_digest = None
        self.fail_after = fail_after

    async def generate(self, prompt):
        for i in range(3):
            if i == self.fail_after:
                raise RuntimeError("the model fell over")
            yield StepOutput(f"t{i} ", i + 1, "length" if i == 2 else None)


def post(app, body: dict) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/chat/completions", json=body)

    return asyncio.run(go())


BODY = {"model": "stub", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("stream", [False, True])
def test_failure_before_the_first_token_is_an_http_error(tiny_checkpoint, stream):
    app = create_api(StubBackend(tiny_checkpoint, fail_after=0))
    response = post(app, {**BODY, "stream": stream})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert post(app, {**BODY, "model": "nope"}).status_code == 404  # the app still answers


def test_failure_mid_stream_is_reported_in_band(tiny_checkpoint):
    response = post(create_api(StubBackend(tiny_checkpoint, fail_after=1)), {**BODY, "stream": True})
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "t0 "
    assert json.loads(events[-2])["error"]["code"] == "internal_error"


def test_a_stream_that_works_carries_every_piece(tiny_checkpoint):
    response = post(create_api(StubBackend(tiny_checkpoint, fail_after=99)), {**BODY, "stream": True})
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "t0 t1 t2 "
    assert events[-1]["choices"][0]["finish_reason"] == "length"
