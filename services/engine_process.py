"""Decoding in a process of its own, beside the replica: HTTP and the model stop sharing one GIL.

In a thread, the decode loop and the replica's event loop (request parsing, tokenizing, image decoding,
every streamed chunk) take turns on one interpreter lock, so each request's Python work delays every
running row's next token. vLLM's V1 engine moved its engine core out of the API server's process for the
same reason. Here the replica keeps the HTTP side and the processor (tokenizer, image preprocessing); a
child process loads the model and runs services.scheduler's DecodeLoop unchanged, and the two talk over a
socket pair:

  replica -> engine   ("start", serve settings) once, then
                      ("submit", [(request id, input ids, pixel values, sampling params, JSON schema)])
                      ("cancel", request id), ("stop", None)
  engine -> replica   ("ready", context length) or ("failed", traceback) once, at start
                      ("out", [(request id, output)], (steps, rows decoded, prefills, live)) after a step

A request's grammar crosses as its JSON schema and is compiled again in the engine (the replica compiles it
first to refuse a bad schema with a 400). Streams are paced on the replica's side, as in a thread.
The engine exits when the replica's end of the socket closes or the replica's process is gone (even by kill -9);
if the engine dies, every live request fails and the replica's health check fails, so Serve replaces it.
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from services.engine import Prompt, StepOutput
from services.scheduler import RequestStream

FLUSH = "flush"  # an engine -> replica item: send what this stream buffered (a long prefill comes next)


class EngineStream(RequestStream):
    """A RequestStream whose cancellation also reaches the engine process."""

    def __init__(self, loop, interval_s: float, engine: EngineProcess):
        super().__init__(loop, interval_s)
        self._engine = engine
        self.request_id = -1

    def cancel(self) -> None:
        super().cancel()
        self._engine.cancel(self.request_id)


class EngineProcess:
    """The replica's side: DecodeLoop's interface (submit, alive, counters) over a child process."""

    def __init__(self, settings_args: dict[str, Any]):
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "services.engine_process", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=env,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._send_lock = threading.Lock()
        self._streams: dict[int, RequestStream] = {}
        self._ids = itertools.count()
        # The engine's counters as of its last message (services.scheduler.DecodeLoop's).
        self.steps = self.rows_decoded = self.prefills = self.live = 0
        _send(self._conn, ("start", settings_args))
        try:
            kind, payload = _recv(self._conn)
        except (EOFError, OSError):  # it died before it could say why (its output is in the replica's log)
            kind, payload = "failed", f"it exited with code {self._process.wait()} before it was ready"
        if kind != "ready":
            self._process.wait()
            raise RuntimeError(f"the engine process failed to start:\n{payload}")
        self.context_length = int(payload)
        self._reader = threading.Thread(target=self._read, name="mm1-engine-reader", daemon=True)
        self._reader.start()

    def stream(self, loop, interval_s: float) -> EngineStream:
        return EngineStream(loop, interval_s, self)

    def submit(self, prompts: Sequence[Prompt], streams: Sequence[EngineStream]) -> None:
        items = []
        for prompt, stream in zip(prompts, streams, strict=True):
            stream.request_id = next(self._ids)
            self._streams[stream.request_id] = stream
            schema = prompt.constraint.schema if prompt.constraint is not None else None
            items.append((stream.request_id, prompt.input_ids, prompt.pixel_values, prompt.params, schema))
        self._send(("submit", items))

    def cancel(self, request_id: int) -> None:
        """The request's stream is closed (the client went away, or its answer ended): stop its decoding."""
        if self._streams.pop(request_id, None) is not None:
            self._send(("cancel", request_id))

    def alive(self) -> bool:
        return self._reader.is_alive() and self._process.poll() is None

    def close(self, timeout_s: float = 30) -> None:
        """Stop the engine (live requests fail) and wait for it to exit."""
        self._send(("stop", None))
        self._conn.close()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _send(self, message: tuple) -> None:
        try:
            with self._send_lock:
                _send(self._conn, message)
        except OSError:
            pass  # the engine is gone: the reader fails every live request

    def _read(self) -> None:
        try:
            while True:
                _, items, (self.steps, self.rows_decoded, self.prefills, self.live) = _recv(self._conn)
                for request_id, item in items:
                    stream = self._streams.get(request_id)
                    if stream is None:
                        continue
                    if item == FLUSH:
                        stream.flush()
                        continue
                    if isinstance(item, str):  # a failure, as text
                        item = RuntimeError(item)
                    else:
                        item = StepOutput(*item)
                    if isinstance(item, BaseException) or item.finish_reason is not None:
                        self._streams.pop(request_id, None)  # (cancel may have taken it meanwhile)
                    stream.deliver(item)
        except (EOFError, OSError):
            pass
        finally:
            failure = RuntimeError(f"the engine process exited (code {self._process.poll()})")
            for stream in list(self._streams.values()):
                stream.deliver(failure)
            self._streams.clear()


def _send(conn: Connection, message: tuple) -> None:
    # Plain pickle, not the Connection's own: torch registers a reduction with multiprocessing's pickler that
    # hands tensors over as shared-memory file descriptors, which needs a multiprocessing parent.
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> tuple:
    return pickle.loads(conn.recv_bytes())


# ------------------------------------------------------------------------------------------------ engine


class _Outbox:
    """The engine's outputs since the last step, sent as one message."""

    def __init__(self, conn: Connection, loop_stats: Callable[[], tuple[int, ...]]):
        self._conn = conn
        self._stats = loop_stats
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._items: list[tuple[int, Any]] = []
        self._sent_stats: tuple[int, ...] = ()
        self.tags: dict[int, _Tag] = {}

    def put(self, request_id: int, item: Any) -> None:
        with self._lock:
            self._items.append((request_id, item))

    def send(self) -> None:
        """Send the outputs, or only the counters when they changed (a cancelled row leaves silently).
        The decoding thread calls it after each step, the receiving thread for a request that failed early."""
        with self._send_lock:
            stats = self._stats()
            with self._lock:
                items, self._items = self._items, []
            if items or stats != self._sent_stats:
                _send(self._conn, ("out", items, stats))
                self._sent_stats = stats


class _Tag:
    """The engine's stand-in for a replica's RequestStream (what DecodeLoop delivers to)."""

    def __init__(self, request_id: int, outbox: _Outbox):
        self.request_id = request_id
        self.outbox = outbox
        self.cancelled = False

    def deliver(self, item: StepOutput | BaseException) -> None:
        if isinstance(item, BaseException):
            payload: Any = f"{type(item).__name__}: {item}"
        else:
            payload = (item.text, item.completion_tokens, item.finish_reason, item.logprobs)
        if isinstance(item, BaseException) or item.finish_reason is not None:
            self.outbox.tags.pop(self.request_id, None)
        self.outbox.put(self.request_id, payload)

    def flush(self) -> None:
        self.outbox.put(self.request_id, FLUSH)


def _engine_main(fd: int) -> None:
    conn = Connection(fd)
    try:
        import torch

        from mm1.model import load_for_inference
        from services import grammar
        from services.engine import Engine
        from services.scheduler import DecodeLoop
        from services.settings import ServeSettings

        kind, args = _recv(conn)
        settings = ServeSettings.from_args(args)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        model, processor = load_for_inference(settings.checkpoint, device=settings.torch_device)
        engine = Engine(model, processor)
    except BaseException:
        _send(conn, ("failed", traceback.format_exc()))
        return
    loop: DecodeLoop | None = None
    outbox = _Outbox(conn, lambda: (loop.steps, loop.rows_decoded, loop.prefills, loop.live))
    loop = DecodeLoop(engine, max_rows=settings.max_batch_size, after_step=outbox.send)
    threading.Thread(target=_exit_with, args=(os.getppid(),), name="mm1-engine-watch", daemon=True).start()
    _send(conn, ("ready", engine.context_length))
    while True:
        try:
            kind, payload = _recv(conn)
        except (EOFError, OSError):
            os._exit(0)  # the replica is gone
        if kind == "stop":
            os._exit(0)
        if kind == "cancel":
            tag = outbox.tags.get(payload)
            if tag is not None:
                tag.cancelled = True
            continue
        prompts, tags = [], []
        for request_id, input_ids, pixel_values, params, schema in payload:
            try:
                constraint = grammar.compile_schema(processor, schema) if schema is not None else None
            except Exception as exc:
                _Tag(request_id, outbox).deliver(exc)
                outbox.send()
                continue
            prompts.append(Prompt(input_ids, pixel_values, params, constraint))
            tags.append(outbox.tags.setdefault(request_id, _Tag(request_id, outbox)))
        if prompts:
            loop.submit(prompts, tags)


def _exit_with(replica_pid: int) -> None:
    """Exit once the replica's process is gone, even if its end of the socket lives on in a process it forked."""
    while os.getppid() == replica_pid:
        time.sleep(1.0)
    os._exit(0)


if __name__ == "__main__":
    _engine_main(int(sys.argv[1]))
