"""The HTTP surface: /v1/chat/completions (plain and server-sent events), /v1/models, /health.

`create_api(backend)` builds the FastAPI app around anything that provides the `ChatBackend` members, so the
routes do not depend on how generation is scheduled (the Serve deployment batches; a test could pass a stub).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mm1 import metrics
from mm1.model import MM1Processor
from services import protocol
from services.engine import Prompt, StepOutput
from services.errors import APIError, install_error_handlers
from services.images import ImagePolicy
from services.prompts import Limits, build_prompt
from services.settings import ServeSettings


class ChatBackend(Protocol):
    settings: ServeSettings
    processor: MM1Processor
    context_length: int
    # SHA-256 hex digest of the API key (None = no key required): the key itself is never kept.
    api_key_digest: str | None

    def generate(self, prompt: Prompt) -> AsyncIterator[StepOutput]: ...


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class RequestCounter:
    """Counts every chat completion by status, errors included, for Prometheus (mm1_serve_requests).

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs the route in a
    task of its own and relays every streamed chunk through a memory stream, a cost paid per request and
    per chunk.
    """

    def __init__(self, app: ASGIApp, model: str):
        self.app = app
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return

        counted = False

        async def send_noting_status(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start":
                counted = True
                metrics.request_served(self.model, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:
            # An unexpected error is answered (500) by the outermost middleware, beyond this one.
            if not counted:
                metrics.request_served(self.model, 500)
            raise


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def create_api(backend: ChatBackend) -> FastAPI:
    settings = backend.settings
    policy = ImagePolicy.from_settings(settings)
    limits = Limits(settings.max_images, backend.context_length, settings.default_max_tokens)
    started = int(time.time())
    app = FastAPI(title="MM1 OpenAI-compatible API", docs_url=None, redoc_url=None)

    app.add_middleware(RequestCounter, model=settings.model_name)
    install_error_handlers(app)

    async def authorize(request: Request) -> None:  # async: FastAPI runs sync dependencies in a thread
        if not backend.api_key_digest:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401, "missing API key: send it as 'Authorization: Bearer KEY'", code="missing_api_key"
            )
        if not hmac.compare_digest(key_digest(token.strip()), backend.api_key_digest):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != settings.model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {settings.model_name!r}",
                param="model",
                code="model_not_found",
            )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": settings.model_name}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [protocol.model_card(settings.model_name, started)]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorize)])
    async def get_model(name: str) -> dict[str, Any]:
        check_model(name)
        return protocol.model_card(settings.model_name, started)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: protocol.ChatCompletionRequest) -> Any:
        check_model(body.model)
        prompt = await build_prompt(body, backend.processor, policy, limits)
        if body.stream:
            events = _stream(backend, prompt, body.model, body.include_usage)
            # Wait for the first token before answering: the headers then leave together with it (one message
            # from the replica to the proxy instead of two), and a failure before it is a plain HTTP error.
            first = await anext(events)
            return StreamingResponse(_prepend(first, events), media_type="text/event-stream")
        text, completion_tokens, finish_reason = [], 0, "stop"
        async for out in backend.generate(prompt):
            text.append(out.text)
            completion_tokens = out.completion_tokens
            finish_reason = out.finish_reason or finish_reason
        cid = protocol.completion_id()
        return JSONResponse(
            protocol.completion(
                cid, body.model, "".join(text), finish_reason, len(prompt.input_ids), completion_tokens
            )
        )

    return app


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for item in rest:
        yield item


async def _stream(
    backend: ChatBackend, prompt: Prompt, model: str, include_usage: bool
) -> AsyncIterator[str]:
    """SSE: a role delta (sent with the first token, so it measures time to first token honestly), content
    deltas, a final chunk with finish_reason, the usage chunk when asked for, then [DONE].

    Events that are ready together leave as one write: each write is a message from the replica to the
    HTTP proxy, and those cost more than the bytes in them.
    """
    cid, created = protocol.completion_id(), int(time.time())

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        return _sse(protocol.chunk(cid, model, created, delta, finish_reason, include_usage))

    completion_tokens, finish_reason, first = 0, "stop", True
    pending: list[str] = []
    started = False
    try:
        async for out in backend.generate(prompt):
            if first:
                pending.append(chunk({"role": "assistant", "content": ""}))
                first = False
            if out.text:
                pending.append(chunk({"content": out.text}))
            completion_tokens = out.completion_tokens
            finish_reason = out.finish_reason or finish_reason
            if out.finish_reason is None and pending:
                yield "".join(pending)
                pending, started = [], True
        pending.append(chunk({}, finish_reason))
        if include_usage:
            pending.append(
                _sse(protocol.usage_chunk(cid, model, created, len(prompt.input_ids), completion_tokens))
            )
    except Exception as exc:
        if not started:
            raise  # nothing sent yet: the caller answers with an HTTP error
        # Headers are sent already: report in-band, as OpenAI does.
        pending.append(
            _sse(APIError(500, f"generation failed: {type(exc).__name__}", code="internal_error").body())
        )
    pending.append(_sse("[DONE]"))
    yield "".join(pending)
