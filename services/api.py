"""The HTTP surface: /v1/chat/completions (plain and server-sent events), /v1/models, /health.

`create_api(backend)` builds the FastAPI app around anything that provides the `ChatBackend` members, so the
routes do not depend on how generation is scheduled (the Serve deployment batches; a test could pass a stub).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mm1 import metrics
from mm1.model import MM1Processor
from services import grammar, protocol
from services.engine import Prompt, StepOutput
from services.errors import APIError, bad_request, install_error_handlers
from services.images import ImagePolicy
from services.prompts import Limits, build_prompt
from services.sampling import choice_seed
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

    vocabulary: list[grammar.Vocabulary] = []  # built on the first request that needs it

    async def get_vocabulary() -> grammar.Vocabulary:
        if not vocabulary:  # ~1 s for a large vocabulary: not on the event loop
            vocabulary.append(await asyncio.to_thread(grammar.vocabulary, backend.processor))
        return vocabulary[0]

    async def constraint_for(body: protocol.ChatCompletionRequest) -> grammar.JsonGrammar | None:
        schema = grammar.schema_for(body.response_format) if body.response_format else None
        if schema is None:
            return None
        await get_vocabulary()
        try:  # compiling a large schema takes a while (llguidance drops the GIL meanwhile)
            return await asyncio.to_thread(grammar.compile_schema, backend.processor, schema)
        except grammar.GrammarError as exc:
            raise bad_request(
                f"response_format: the JSON schema cannot be used: {exc}",
                "response_format.json_schema.schema",
                "invalid_json_schema",
            ) from None

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: protocol.ChatCompletionRequest) -> Any:
        check_model(body.model)
        check_fields(body)
        constraint = await constraint_for(body)
        prompt = await build_prompt(body, backend.processor, policy, limits)
        prompts = choices(body, prompt, constraint)
        token_bytes = (await get_vocabulary()).token_bytes if body.logprobs else None
        if body.stream:
            events = _stream(backend, prompts, body.model, body.include_usage, token_bytes)
            # Wait for the first token before answering: the headers then leave together with it (one message
            # from the replica to the proxy instead of two), and a failure before it is a plain HTTP error.
            first = await anext(events)
            return StreamingResponse(_prepend(first, events), media_type="text/event-stream")
        if len(prompts) == 1:
            answers = [await _collect(backend.generate(prompts[0]))]
        else:
            answers = list(await asyncio.gather(*(_collect(backend.generate(p)) for p in prompts)))
        return JSONResponse(
            protocol.completion(
                protocol.completion_id(),
                body.model,
                [
                    protocol.choice(
                        i,
                        text,
                        finish_reason,
                        protocol.token_logprobs(entries, token_bytes) if token_bytes else None,
                    )
                    for i, (text, _, finish_reason, entries) in enumerate(answers)
                ],
                len(prompt.input_ids),
                sum(tokens for _, tokens, _, _ in answers),
            )
        )

    return app


def check_fields(body: protocol.ChatCompletionRequest) -> None:
    """Refuse what we would otherwise silently not do (400, naming the field)."""
    field = body.unsupported()
    if field is not None:
        raise bad_request(
            f"Unsupported parameter: '{field}' is not supported by this server",
            field,
            "unsupported_parameter",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true", "top_logprobs", "invalid_request")
    if body.ignore_eos and body.response_format is not None and body.response_format.type != "text":
        raise bad_request(
            "ignore_eos cannot be combined with a JSON response_format: the answer ends where its JSON does",
            "ignore_eos",
            "unsupported_value",
        )


def choices(
    body: protocol.ChatCompletionRequest, prompt: Prompt, constraint: grammar.JsonGrammar | None
) -> list[Prompt]:
    """One prompt per choice (n): its own seed, its own grammar state, log-probabilities if asked, and whether
    its answer is streamed."""
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return [
        dataclasses.replace(
            prompt,
            params=dataclasses.replace(
                prompt.params, seed=choice_seed(prompt.params.seed, i), logprobs=logprobs
            ),
            constraint=None if constraint is None else constraint if i == 0 else constraint.fresh(),
            streamed=bool(body.stream),
        )
        for i in range(body.n)
    ]


async def _collect(outputs: AsyncIterator[StepOutput]) -> tuple[str, int, str, list[Any]]:
    """A whole answer: text, completion tokens, finish reason, log-probability entries."""
    text, completion_tokens, finish_reason, entries = [], 0, "stop", []
    async for out in outputs:
        text.append(out.text)
        entries += out.logprobs
        completion_tokens = out.completion_tokens
        finish_reason = out.finish_reason or finish_reason
    return "".join(text), completion_tokens, finish_reason, entries


async def _merged(streams: Sequence[AsyncIterator[StepOutput]]) -> AsyncIterator[tuple[int, StepOutput]]:
    """(choice index, output) from every choice's stream as they come."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, StepOutput | Exception | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[StepOutput]) -> None:
        try:
            async for out in stream:
                queue.put_nowait((index, out))
        except Exception as exc:
            queue.put_nowait((index, exc))
        queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:  # the client went away or a choice failed: stop decoding the others
            task.cancel()


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for item in rest:
        yield item


async def _stream(
    backend: ChatBackend,
    prompts: Sequence[Prompt],
    model: str,
    include_usage: bool,
    token_bytes: Callable[[int], bytes] | None = None,
) -> AsyncIterator[str]:
    """SSE: per choice a role delta (sent with its first token, so it measures time to first token
    honestly), content deltas (with their tokens' log-probabilities when asked for), a final chunk with
    finish_reason; then the usage chunk when asked for (completion tokens summed over the choices), then
    [DONE]. Choices (n > 1) interleave, each chunk naming its index.

    Events that are ready together leave as one write: each write is a message from the replica to the
    HTTP proxy, and those cost more than the bytes in them.
    """
    cid, created = protocol.completion_id(), int(time.time())
    n = len(prompts)

    def chunk(index: int, delta: dict[str, str], finish_reason: str | None = None, entries=None) -> str:
        logprobs = None
        if token_bytes is not None and entries is not None:
            logprobs = protocol.token_logprobs(entries, token_bytes)
        return _sse(protocol.chunk(cid, model, created, delta, finish_reason, include_usage, index, logprobs))

    completion_tokens, finish_reasons, first = [0] * n, ["stop"] * n, [True] * n
    pending: list[str] = []
    started = False
    open_choices, last_index = n, 0
    try:
        async for index, out in _merged([backend.generate(p) for p in prompts]):
            if first[index]:
                pending.append(chunk(index, {"role": "assistant", "content": ""}))
                first[index] = False
            if out.text or out.logprobs:
                pending.append(chunk(index, {"content": out.text}, entries=out.logprobs))
            completion_tokens[index] = out.completion_tokens
            if out.finish_reason is not None:
                finish_reasons[index], last_index = out.finish_reason, index
                open_choices -= 1
                if open_choices:
                    pending.append(chunk(index, {}, out.finish_reason))
            if open_choices and pending:
                yield "".join(pending)
                pending, started = [], True
        # The last choice's final chunk leaves with [DONE]: one write.
        pending.append(chunk(last_index, {}, finish_reasons[last_index]))
        if include_usage:
            pending.append(
                _sse(
                    protocol.usage_chunk(
                        cid, model, created, len(prompts[0].input_ids), sum(completion_tokens)
                    )
                )
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
