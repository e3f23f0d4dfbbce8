"""The Ray Serve application: an OpenAI-compatible chat endpoint over an MM1 checkpoint.

One deployment holds both the FastAPI ingress and the model. A separate model deployment would add a Ray
hop per request and per streamed chunk, which on a small model costs more than the model itself; ingress
work (JSON, image fetching and decoding) is light and runs beside generation in the same replica, so
replicas, autoscaling and GPUs scale the two together.

Batching: `@serve.batch(max_batch_size, batch_wait_timeout_s)` collects the requests that arrive together
and hands them, as one group, to the replica's decoding loop (services.scheduler): the group is prefilled in
one forward pass and then decoded together with every request already running, up to max_batch_size
sequences at a time (continuous batching; max_batch_size=1 runs requests one after another). Decoding runs in
a process of its own beside the replica (services.engine_process; `engine_process: false` = a thread of the
replica), so the event loop keeps accepting requests and streaming tokens meanwhile without taking the
interpreter lock from the model.

`build_app(args)` is the application builder: `services.openai_app:build_app` with args {checkpoint,
model_name, + the ServeSettings fields} is what a RayService's serveConfigV2 names.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import torch
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from mm1.model import load_for_inference, load_processor
from services.api import create_api, key_digest
from services.engine import Engine, Prompt, StepOutput
from services.engine_process import EngineProcess
from services.scheduler import DecodeLoop, RequestStream
from services.settings import ServeSettings


@serve.deployment(name="MM1ChatServer")
@serve.ingress()
class ChatServer:
    def __init__(self, settings: dict[str, Any], api_key_digest: str | None = None):
        self.settings = ServeSettings.from_args(settings)
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        # Any storage location: a winner on an object store is copied to this replica's disk once.
        self.decoder: DecodeLoop | EngineProcess
        if self.settings.engine_process:
            self.processor = load_processor(self.settings.checkpoint)  # a missing folder fails here, plainly
            self.decoder = EngineProcess(self.settings.to_args())
            self.context_length = self.decoder.context_length
        else:
            model, self.processor = load_for_inference(
                self.settings.checkpoint, device=self.settings.torch_device
            )
            engine = Engine(model, self.processor)
            self.context_length = engine.context_length
            self.decoder = DecodeLoop(engine, max_rows=self.settings.max_batch_size)
        self._admit.set_max_batch_size(self.settings.max_batch_size)
        self._admit.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        # The key from this replica's environment (Kubernetes: a Secret) or, failing that, the digest the
        # builder took from its own (a local Ray started before the variable was set).
        name = self.settings.api_key_env
        own_key = os.environ.get(name) if name else None
        self.api_key_digest = key_digest(own_key) if own_key else (api_key_digest if name else None)

    def __del__(self) -> None:
        """Serve's replica shutdown: stop the engine process now rather than when it notices."""
        if isinstance(getattr(self, "decoder", None), EngineProcess):
            self.decoder.close(timeout_s=5)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self)

    def check_health(self) -> None:
        """Serve's replica health check: a dead decoder means a replacement replica."""
        if not self.decoder.alive():
            raise RuntimeError("the decoder has stopped (its thread or engine process)")

    def decoding_stats(self) -> dict[str, int]:
        """Decode steps so far, rows decoded over them, requests admitted and not finished, prefill calls
        (through a handle: `serve.get_app_handle(app).decoding_stats.remote()`), and 1 when decoding runs in an
        engine process (0: a thread of the replica)."""
        return {
            "steps": self.decoder.steps,
            "rows_decoded": self.decoder.rows_decoded,
            "live": self.decoder.live,
            "prefills": self.decoder.prefills,
            "engine_process": int(isinstance(self.decoder, EngineProcess)),
        }

    async def generate(self, prompt: Prompt) -> AsyncIterator[StepOutput]:
        stream = await self._admit(prompt)
        try:
            async for output in stream:
                yield output
        finally:
            stream.cancel()  # the client went away (or the answer is complete): stop decoding it

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)  # replaced from the settings in __init__
    async def _admit(self, prompts: list[Prompt]) -> list[RequestStream]:
        loop = asyncio.get_running_loop()
        # A non-streamed answer is read whole: its stream releases the first output and the last only.
        streams = [
            self.decoder.stream(loop, self.settings.stream_interval_s if p.streamed else math.inf)
            for p in prompts
        ]
        self.decoder.submit(prompts, streams)
        return streams


def deployment_options(settings: ServeSettings) -> dict[str, Any]:
    """Replicas or autoscaling, GPUs, and how many requests a replica takes in at once."""
    actor_options: dict[str, Any] = {}
    if settings.gpus_per_replica > 0:
        actor_options["num_gpus"] = settings.gpus_per_replica
    else:
        # A CPU replica's torch threads share the cores with its own HTTP event loop (and, on a laptop, the
        # clients): OpenMP threads that spin while they wait take that CPU from them. With them sleeping, c=32
        # streamed measured 83% of bare batched generate on 2 cores (median of 5 pairs; 78-80% in 3-pair runs
        # without; benchmarks/serve.py). It must be in the environment before torch loads OpenMP: runtime_env.
        actor_options["runtime_env"] = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    options: dict[str, Any] = {
        "max_ongoing_requests": settings.replica_ongoing_requests,
        "ray_actor_options": actor_options,
    }
    if settings.autoscaling:
        options["autoscaling_config"] = settings.autoscaling_config
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
