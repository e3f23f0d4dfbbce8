"""The OpenAI chat-completions wire format: the request body we accept and the objects we send back.

Fields a client may send fall in three groups (README.md, "Serving", has the table):
- implemented: model, messages, max_tokens / max_completion_tokens, temperature, top_p, n, seed, stop,
  stream, stream_options, logprobs, top_logprobs, response_format (text, json_object, json_schema), and vLLM's
  ignore_eos;
- accepted with no effect on the answer (bookkeeping for OpenAI's platform): `ACCEPTED_UNUSED`;
- OpenAI fields we do not implement: `UNSUPPORTED` maps each to the values that mean "not used" (null, an
  empty list, a zero penalty...); any other value is refused with a 400 naming the field, never ignored.
Other, unknown fields are ignored, as most servers do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_CHOICES = 16  # n: choices decode as rows of the running batch, so a request's n takes n of its rows
MAX_TOP_LOGPROBS = 20  # as OpenAI's API

# OpenAI request fields we do not implement -> the values that leave them unused (accepted silently).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "store": (None, False),
}
# Fields of an input message we do not implement: an assistant turn's tool calls, audio.
UNSUPPORTED_IN_MESSAGES: dict[str, tuple[Any, ...]] = {
    "tool_calls": (None, []),
    "function_call": (None,),
    "audio": (None,),
}
# Accepted, no effect on the answer: identifiers and platform settings of OpenAI's own service.
ACCEPTED_UNUSED = ("user", "metadata", "service_tier", "safety_identifier", "prompt_cache_key")


class ImageURL(BaseModel):
    url: str
    detail: str | None = None  # accepted for compatibility; images are always preprocessed the same way


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept, to refuse UNSUPPORTED_IN_MESSAGES by name

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    # The schema is always enforced (by a grammar), strict or not.
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class ChatCompletionRequest(BaseModel):
    # Kept, so that `unsupported` can name OpenAI fields we do not implement; unknown ones are ignored.
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extension: keep generating past the end-of-turn token (benchmarks use it for fixed lengths).
    ignore_eos: bool = False

    @property
    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def unsupported(self) -> str | None:
        """The first OpenAI field set to something we do not implement (its param path), or None."""
        extra = self.model_extra or {}
        for name, unused in UNSUPPORTED.items():
            if name in extra and not any(_same(extra[name], value) for value in unused):
                return name
        for i, message in enumerate(self.messages):
            extra = message.model_extra or {}
            for name, unused in UNSUPPORTED_IN_MESSAGES.items():
                if name in extra and not any(_same(extra[name], value) for value in unused):
                    return f"messages[{i}].{name}"
        return None


def _same(given: Any, unused: Any) -> bool:
    if isinstance(unused, bool) or unused is None:
        return given is unused
    if isinstance(unused, int | float):
        return isinstance(given, int | float) and not isinstance(given, bool) and given == unused
    return type(given) is type(unused) and given == unused


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_logprobs(entries: Sequence[Any], token_bytes: Callable[[int], bytes]) -> list[dict[str, Any]]:
    """mm1.model.decoding.TokenLogprob entries -> OpenAI's `logprobs.content` items."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        raw = token_bytes(token)
        # -9999.0 stands for -inf, as OpenAI's API does (JSON has no infinity).
        value = logprob if logprob > -9999.0 else -9999.0
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": value, "bytes": list(raw)}

    return [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries]


def logprobs_field(content: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if content is None else {"content": content, "refusal": None}


def choice(
    index: int, text: str, finish_reason: str, logprobs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish_reason,
        "logprobs": logprobs_field(logprobs),
    }


def completion(
    cid: str, model: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """`completion_tokens`: summed over the choices, as OpenAI counts them."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
        "system_fingerprint": None,
    }


def chunk(
    cid: str,
    model: str,
    created: int,
    delta: dict[str, str],
    finish_reason: str | None = None,
    with_usage_field: bool = False,
    index: int = 0,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "delta": delta,
                "finish_reason": finish_reason,
                "logprobs": logprobs_field(logprobs),
            }
        ],
    }
    if with_usage_field:
        # With stream_options.include_usage every chunk carries `usage`: null except the last one.
        body["usage"] = None
    return body


def usage_chunk(
    cid: str, model: str, created: int, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "mm1"}
