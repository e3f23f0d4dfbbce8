"""The Ray Serve application: an OpenAI-compatible chat endpoint over an MM1 checkpoint.

One deployment holds both the FastAPI ingress and the model. A separate model deployment would add a Ray
hop per request and per streamed chunk, which on a small model costs more than the model itself; ingress
work (JSON, image fetching and decoding) is light and runs beside generation in the same replica, so
replicas, autoscaling and GPUs scale the two together.

Concurrent requests meet in `@serve.batch` and are decoded together (services.engine); the decoding loop
runs in a worker thread so the replica's event loop keeps accepting requests and streaming tokens meanwhile.

`build_app(args)` is the application builder: `services.openai_app:build_app` with args {checkpoint,
model_name, + the ServeSettings fields} is what a RayService's serveConfigV2 names.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from mm1.model import load_for_inference
from services.api import create_api, key_digest
from services.checkpoints import local_checkpoint
from services.engine import Engine, Prompt, StepOutput
from services.settings import ServeSettings

T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


async def drain_in_thread(
    make_iter: Callable[[], Iterator[T]], executor: ThreadPoolExecutor
) -> AsyncIterator[list[T]]:
    """Run a blocking iterator on `executor`; yield lists of the items produced since the previous yield.

    The producer never waits for the event loop, so when the loop is busy the items pile up and go out
    together (fewer, larger stream chunks under load) instead of stalling the model.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in make_iter():
                loop.call_soon_threadsafe(queue.put_nowait, item)
                if stop.is_set():
                    break
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            loop.call_soon_threadsafe(queue.put_nowait, _Failed(exc))

    future = loop.run_in_executor(executor, produce)
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            done = items[-1] is _DONE
            if isinstance(items[-1], _Failed):
                raise items[-1].exc
            batch = items[:-1] if done else items
            if batch:
                yield batch
            if done:
                return
    finally:
        stop.set()
        await asyncio.shield(future)  # never leave the model to a stray thread when the next batch starts


def visible_steps(steps: Iterator[list[StepOutput | None]]) -> Iterator[list[StepOutput | None]]:
    """Pass on the first step (it marks the first token) and every step with new text or a finish; the
    others carry nothing a client can see (token counts are cumulative), so they cost no event-loop wake-up."""
    for index, step in enumerate(steps):
        if index == 0 or any(out is not None and (out.text or out.finish_reason) for out in step):
            yield step


def merge_steps(steps: list[list[StepOutput | None]], width: int) -> list[StepOutput | None]:
    """Fold consecutive engine steps into one output per request (None: nothing new, already finished)."""
    merged: list[StepOutput | None] = [None] * width
    for step in steps:
        for row, out in enumerate(step):
            if out is None:
                continue
            previous = merged[row]
            merged[row] = (
                out
                if previous is None
                else StepOutput(previous.text + out.text, out.completion_tokens, out.finish_reason)
            )
    return merged


@serve.deployment(name="MM1ChatServer")
@serve.ingress()
class ChatServer:
    def __init__(self, settings: dict[str, Any], api_key_digest: str | None = None):
        self.settings = ServeSettings.from_args(settings)
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        checkpoint = local_checkpoint(self.settings.checkpoint)  # s3:// etc. are copied to local disk
        model, self.processor = load_for_inference(checkpoint, device=self.settings.torch_device)
        self.engine = Engine(model, self.processor)
        self.context_length = self.engine.context_length
        # One thread owns the model: batches run one after another (serve.batch's max_concurrent_batches=1).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mm1-generate")
        self._generate_batch.set_max_batch_size(self.settings.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        # The key from this replica's environment (Kubernetes: a Secret) or, failing that, the digest the
        # builder took from its own (a local Ray started before the variable was set).
        name = self.settings.api_key_env
        own_key = os.environ.get(name) if name else None
        self.api_key_digest = key_digest(own_key) if own_key else (api_key_digest if name else None)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self)

    def generate(self, prompt: Prompt) -> AsyncIterator[StepOutput]:
        return self._generate_batch(prompt)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)  # replaced from the settings in __init__
    async def _generate_batch(self, prompts: list[Prompt]) -> AsyncIterator[list[Any]]:
        finished = [False] * len(prompts)
        produce = lambda: visible_steps(self.engine.generate(prompts))  # noqa: E731
        async for steps in drain_in_thread(produce, self._executor):
            merged = merge_steps(steps, len(prompts))
            results: list[Any] = []
            for row, out in enumerate(merged):
                if finished[row]:
                    results.append(StopIteration)  # serve.batch's marker: this request's stream has ended
                    continue
                results.append(out if out is not None else StepOutput("", 0))
                finished[row] = out is not None and out.finish_reason is not None
            yield results


def deployment_options(settings: ServeSettings) -> dict[str, Any]:
    """Replicas or autoscaling, GPUs, and how many requests a replica takes in at once."""
    actor_options: dict[str, Any] = {}
    if settings.gpus_per_replica > 0:
        actor_options["num_gpus"] = settings.gpus_per_replica
    options: dict[str, Any] = {
        "max_ongoing_requests": settings.replica_ongoing_requests,
        "ray_actor_options": actor_options,
    }
    if settings.autoscaling:
        options["autoscaling_config"] = dict(settings.autoscaling)
    else:
        options["num_replicas"] = settings.num_replicas
    return options


def build_app(args: dict[str, Any]) -> Application:
    """Application builder: args are {checkpoint, model_name, + the other ServeSettings fields}."""
    settings = ServeSettings.from_args(dict(args))
    # Replicas of an already-running Ray may lack the builder's environment: pass them the key's digest,
    # never the key (deployment arguments are stored by Serve and visible to its API).
    key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    digest = key_digest(key) if key else None
    return ChatServer.options(**deployment_options(settings)).bind(settings.to_args(), digest)
