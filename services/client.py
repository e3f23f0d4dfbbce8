"""A small client for the endpoint, on the official `openai` package: `mm1 chat --image FILE "question"`."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from mm1.errors import UserFacingError

# An endpoint without an API key still needs a non-empty one in the openai client.
NO_KEY = "none"


class EndpointError(UserFacingError, RuntimeError):
    """The endpoint could not be reached, or refused the request (its message says why)."""


def image_data_url(path: str | Path) -> str:
    """A local image file as a data URL, its media type taken from the decoded format, not the name."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        kind = (image.format or "png").lower()
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def chat(
    question: str,
    images: Sequence[str],
    url: str,
    model: str | None = None,
    stream: bool = False,
    api_key: str | None = None,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    on_text: Callable[[str], None] | None = None,
    timeout: float = 120.0,
) -> str:
    """Ask one question about `images` (local files, sent as data URLs); return the answer.

    `model` defaults to the endpoint's first model. The API key defaults to $MM1_API_KEY, then
    $OPENAI_API_KEY. With `stream`, `on_text` receives each piece of the answer as it arrives.
    """
    import openai

    try:
        return _chat(question, images, url, model, stream, api_key, temperature, max_tokens, on_text, timeout)
    except openai.APIConnectionError as exc:
        raise EndpointError(
            f"cannot reach an endpoint at {url} ({exc.__cause__ or exc})",
            hint="start one (`mm1 serve CHECKPOINT`, or `make run`, which keeps its endpoint serving) or "
            "pass --url with the address it printed",
        ) from exc
    except openai.APIStatusError as exc:
        raise EndpointError(f"the endpoint at {url} answered {exc.status_code}: {exc.message}") from exc


def _chat(question, images, url, model, stream, api_key, temperature, max_tokens, on_text, timeout) -> str:
    from openai import OpenAI

    for path in images:
        if not Path(path).is_file():
            raise EndpointError(f"image file {path} does not exist", hint="pass --image with a readable file")
    key = api_key or os.environ.get("MM1_API_KEY") or os.environ.get("OPENAI_API_KEY") or NO_KEY
    client = OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=0)
    model = model or client.models.list().data[0].id
    content: list[dict] = [{"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in images]
    content.append({"type": "text", "text": question})
    options: dict = {"model": model, "messages": [{"role": "user", "content": content}]}
    if temperature is not None:
        options["temperature"] = temperature
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if not stream:
        return client.chat.completions.create(**options).choices[0].message.content or ""
    pieces = []
    for event in client.chat.completions.create(**options, stream=True):
        if event.choices and event.choices[0].delta.content:
            pieces.append(event.choices[0].delta.content)
            if on_text is not None:
                on_text(pieces[-1])
    return "".join(pieces)
