"""Continuous batching: one thread decodes every live request a token per step; new requests join between
steps, finished ones leave, so nobody waits for a whole batch to end.

Requests arrive in groups (the replica's `@serve.batch` collects concurrent arrivals within the batch wait);
a group is prefilled in one forward pass and merged into the running batch, up to `max_rows` sequences at
once (with max_rows=1 requests run strictly one after another: batching off). Outputs go back to each
request's `RequestStream` on the event loop; a request whose client went away is dropped at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from services.engine import Batch, Engine, Prompt, StepOutput

logger = logging.getLogger("ray.serve")


class RequestStream:
    """The event-loop side of one request: an async iterator over its StepOutputs.

    `interval_s` paces a stream: after a chunk has gone out, the next leaves at the first step that comes
    `interval_s` later (or at the end of the answer), carrying every step decoded meanwhile. The first chunk
    (it times TTFT) and the last are never held back; 0 sends every visible step. Each chunk is a write from
    the replica through the ingress to the client, which costs more than decoding one token of a small model.

    The decoding thread does the pacing: it buffers outputs and wakes the event loop only when a chunk is
    due. A wake-up per token would make the loop's thread compete with decoding for the GIL at every step.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float = 0.0):
        self._loop = loop
        self._interval = interval_s
        self._lock = threading.Lock()
        self._items: list[StepOutput | BaseException] = []  # delivered, not yet taken by the loop
        self._ready = asyncio.Event()
        self._wake_pending = False  # a wake-up is on its way to the loop
        self._woke_at: float | None = None  # when the last chunk was released (time.monotonic)
        self.cancelled = False  # read by the decoding thread

    # Called from the decoding thread.
    def deliver(self, item: StepOutput | BaseException) -> None:
        with self._lock:
            self._items.append(item)
            now = time.monotonic()
            due = (
                self._woke_at is None
                or self._interval <= 0
                or _final(item)
                or now - self._woke_at >= self._interval
            )
            if not due or self._wake_pending:
                return
            self._wake_pending, self._woke_at = True, now
        self._loop.call_soon_threadsafe(self._ready.set)

    def flush(self) -> None:
        """Release what is buffered now (the decoding thread calls it before a long prefill)."""
        with self._lock:
            if not self._items or self._wake_pending:
                return
            self._wake_pending, self._woke_at = True, time.monotonic()
        self._loop.call_soon_threadsafe(self._ready.set)

    def cancel(self) -> None:
        self.cancelled = True

    async def __aiter__(self) -> AsyncIterator[StepOutput]:
        """Outputs released together are merged into one."""
        while True:
            await self._ready.wait()
            with self._lock:
                items, self._items = self._items, []
                self._ready.clear()
                self._wake_pending = False
            if not items:
                continue
            failure = next((i for i in items if isinstance(i, BaseException)), None)
            if failure is not None:
                raise failure
            merged = StepOutput(
                "".join(i.text for i in items),
                items[-1].completion_tokens,
                items[-1].finish_reason,
                [entry for i in items for entry in i.logprobs],
            )
            yield merged
            if merged.finish_reason is not None:
                return


def _final(item: StepOutput | BaseException) -> bool:
    return isinstance(item, BaseException) or item.finish_reason is not None


def _visible(output: StepOutput) -> bool:
    # The first token (it times TTFT), new text, or the end: other steps carry nothing a client can see.
    return bool(output.text or output.finish_reason or output.completion_tokens == 1)


class DecodeLoop:
    def __init__(self, engine: Engine, max_rows: int, after_step: Callable[[], None] | None = None):
        self.engine = engine
        self.max_rows = max_rows
        # Called after each step's outputs are delivered, and before a prefill once the rows are flushed:
        # services.engine_process sends the outputs from there to the replica.
        self._after_step = after_step or (lambda: None)
        self._pending: deque[tuple[Prompt, RequestStream]] = deque()
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mm1-decode", daemon=True)
        self._thread.start()
        self.steps = 0  # decode steps run; with `rows_decoded`, the mean batch size (metrics, tests)
        self.rows_decoded = 0
        self.live = 0  # requests admitted and not finished (queued or decoding)
        self.prefills = 0  # prefill calls (each admits a group of requests): metrics

    def submit(self, prompts: Sequence[Prompt], streams: Sequence[RequestStream]) -> None:
        with self._wake:
            self._pending.extend(zip(prompts, streams, strict=True))
            self.live += len(prompts)
            self._wake.notify()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stream(self, loop: asyncio.AbstractEventLoop, interval_s: float) -> RequestStream:
        """A stream for one request submitted to this loop."""
        return RequestStream(loop, interval_s)

    def _take(self, batch: Batch | None) -> list[tuple[Prompt, RequestStream]]:
        """Requests to admit now (blocks while there is nothing at all to do)."""
        with self._wake:
            while not self._pending and batch is None:
                self._wake.wait()
            room = self.max_rows - (batch.live if batch else 0)
            if batch is not None and not batch.mergeable():
                room = 0  # a cache layout we cannot merge: admit only between batches
            taken = []
            while self._pending and len(taken) < room:
                prompt, stream = self._pending.popleft()
                if not stream.cancelled:
                    taken.append((prompt, stream))
            return taken

    def _run(self) -> None:
        batch: Batch | None = None
        while True:
            taken = self._take(batch)
            try:
                if taken:
                    if batch is not None:  # a prefill takes many steps' time: send what is buffered first
                        for row in batch.rows:
                            row.tag.flush()
                        self._after_step()
                    group, outputs = self.engine.prefill([p for p, _ in taken], [s for _, s in taken])
                    self.prefills += 1
                    self._deliver(group, outputs)
                    batch = group if batch is None else batch.merge(group)
                if batch is not None:
                    for row in batch.rows:
                        row.finished = row.finished or row.tag.cancelled
                    batch.drop_finished()
                if batch is not None and batch.live:
                    live = batch.live
                    outputs = self.engine.step(batch)
                    self.steps += 1
                    self.rows_decoded += live
                    self._deliver(batch, outputs)
                    batch.drop_finished()
                if batch is not None and not batch.live:
                    batch = None
                self._count_live(batch)
                self._after_step()
            except Exception as exc:  # every live request learns of it; the loop carries on, empty
                logger.exception("decoding failed")
                streams = [row.tag for row in batch.rows] if batch is not None else []
                streams += [s for _, s in taken if s not in streams]
                for stream in streams:
                    stream.deliver(exc)
                batch = None
                self._count_live(batch)
                self._after_step()

    def _count_live(self, batch: Batch | None) -> None:
        with self._wake:  # with submit's increment: a request is counted from the moment it is admitted
            self.live = (batch.live if batch is not None else 0) + len(self._pending)

    @staticmethod
    def _deliver(batch: Batch, outputs: list[StepOutput | None]) -> None:
        for row, output in zip(batch.rows, outputs, strict=True):
            if output is not None and _visible(output):
                row.tag.deliver(output)
