"""From an OpenAI chat request to model input: messages -> chat turns with `<image>` markers -> token ids.

The turns go through `MM1Processor.encode_chat`, i.e. the shared chat template (mm1.data.chat) and image
preprocessing (mm1.data.preprocess), so the served prompt is built exactly as SFT and eval build theirs.
An image part becomes an `<image>` marker at its place among the text parts, parts joined by newlines: the
`<image>\\nquestion` layout of the SFT data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass

from mm1.data.chat import IMAGE, SPECIAL_TOKENS
from mm1.model import MM1Processor
from services.engine import Prompt
from services.errors import APIError, bad_request
from services.images import ImagePolicy, decode_image, read_image_bytes
from services.protocol import ChatCompletionRequest, ImagePart, Message, TextPart
from services.sampling import SamplingParams

MAX_STOP_STRINGS = 4  # as OpenAI's API
# Decoding and preprocessing this many encoded image bytes takes a few ms: cheaper on the event loop than a
# hop to a worker thread (which on a loaded machine waits for a core). Larger requests go to a thread.
INLINE_IMAGE_BYTES = 1_000_000


@dataclass
class Limits:
    max_images: int
    context_length: int
    default_max_tokens: int


def _check_text(text: str, param: str, reserved: Collection[str]) -> str:
    # A typed "<image>", "<|end|>" or an LLM's "<|im_start|>" would be tokenized as the special token: an
    # image without pixels, or a forged turn boundary. Refuse instead of guessing.
    for token in reserved:
        if token in text:
            raise bad_request(f"text may not contain the reserved token {token!r}", param, "reserved_token")
    return text


def _image_parts(messages: list[Message]) -> list[tuple[str, str]]:
    """(param path, url) of every image part, in order."""
    found = []
    for i, message in enumerate(messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if isinstance(part, ImagePart):
                    found.append((f"messages[{i}].content[{j}].image_url.url", part.image_url.url))
    return found


def _message_text(message: Message, index: int, images_allowed: bool, reserved: Collection[str]) -> str:
    """The message as template text, images as `<image>` markers."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return _check_text(message.content, f"messages[{index}].content", reserved)
    pieces = []
    for j, part in enumerate(message.content):
        param = f"messages[{index}].content[{j}]"
        if isinstance(part, TextPart):
            pieces.append(_check_text(part.text, f"{param}.text", reserved))
        elif not images_allowed:
            raise bad_request(f"a {message.role} message cannot contain images", param, "invalid_content")
        else:
            pieces.append(IMAGE)
    return "\n".join(pieces)


def chat_turns(messages: list[Message], reserved: Collection[str] = SPECIAL_TOKENS) -> list[dict]:
    """System/developer messages become system turns: mm1.data.chat gives them to the tokenizer's own template
    (system role included) or, for ours (no system role), puts their text before the first user message.
    Text containing any of `reserved` (the processor's `reserved_tokens`) is refused."""
    turns: list[dict] = []
    for i, message in enumerate(messages):
        if message.role in ("system", "developer"):
            turns.append({"role": "system", "content": _message_text(message, i, False, reserved)})
        else:
            content = _message_text(message, i, message.role == "user", reserved)
            turns.append({"role": message.role, "content": content})
    spoken = [t for t in turns if t["role"] != "system"]
    if not spoken or spoken[-1]["role"] != "user":
        raise bad_request("the last message must come from the user", "messages", "invalid_messages")
    return turns


def sampling_params(request: ChatCompletionRequest, prompt_tokens: int, limits: Limits) -> SamplingParams:
    room = limits.context_length - prompt_tokens
    if room < 1:
        raise bad_request(
            f"this model's maximum context length is {limits.context_length} tokens, but the messages take "
            f"{prompt_tokens} tokens (images included)",
            "messages",
            "context_length_exceeded",
        )
    requested = request.max_completion_tokens or request.max_tokens
    if requested is not None and requested > room:
        raise bad_request(
            f"this model's maximum context length is {limits.context_length} tokens; the messages take "
            f"{prompt_tokens} and max_tokens asks for {requested} more",
            "max_tokens",
            "context_length_exceeded",
        )
    stop = request.stop_strings
    if len(stop) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings are allowed", "stop", "invalid_stop")
    return SamplingParams(
        max_tokens=requested or min(limits.default_max_tokens, room),
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        stop=stop,
        ignore_eos=request.ignore_eos,
    )


async def build_prompt(
    request: ChatCompletionRequest, processor: MM1Processor, policy: ImagePolicy, limits: Limits
) -> Prompt:
    parts = _image_parts(request.messages)
    if len(parts) > limits.max_images:
        raise bad_request(
            f"{len(parts)} images were sent; this server accepts at most {limits.max_images} per request",
            "messages",
            "too_many_images",
        )
    turns = chat_turns(
        request.messages, processor.reserved_tokens
    )  # validate the text before fetching anything
    blobs = list(await asyncio.gather(*(read_image_bytes(url, policy, param) for param, url in parts)))

    def encode() -> dict:
        images = [decode_image(data, policy, param) for data, (param, _) in zip(blobs, parts, strict=True)]
        try:
            return processor.encode_chat(turns, images)
        except ValueError as exc:  # the processor's own consistency checks
            raise APIError(400, str(exc), param="messages", code="invalid_messages") from None

    small = sum(len(data) for data in blobs) <= INLINE_IMAGE_BYTES
    encoded = encode() if small else await asyncio.to_thread(encode)
    input_ids = encoded["input_ids"][0].tolist()
    return Prompt(input_ids, encoded["pixel_values"], sampling_params(request, len(input_ids), limits))
