"""Continuous batching in-process: requests join a running batch, leave when done or cancelled, and a
decoding failure reaches every live request without killing the loop."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
from conftest import image_bytes

from mm1.data.preprocess import load_image
from mm1.model import load_for_inference
from services.engine import Engine, Prompt, StepOutput
from services.sampling import SamplingParams
from services.scheduler import DecodeLoop, RequestStream

TURNS = [{"role": "user", "content": "<image>\\nhow many shapes are there?"}]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    model, processor = load_for_inference(tiny_checkpoint)
    return Engine(model, processor)


def make_prompt(engine, max_tokens: int, seed: int | None = None, temperature: float = 0.0) -> Prompt:
    encoded = engine.processor.encode_chat(TURNS, [load_image(image_bytes())])
    params = SamplingParams(max_tokens, temperature=temperature, seed=seed, ignore_eos=True)
    return Prompt(encoded["input_ids"][0].tolist(), encoded["pixel_values"], params)


async def collect(stream: RequestStream) -> tuple[str, int, str]:
    text, last = "", None
    async for out in stream:
        text += out.text
        last = out
    return text, last.completion_tokens, last.finish_reason


def test_staggered_requests_share_decoding_and_answer_as_if_alone(engine):
    prompts = [make_prompt(engine, n, seed=i, temperature=1.0) for i, n in enumerate((20, 6, 12))]
    alone = []
    for p in prompts:
        text = "".join(out[0].text for out in engine.generate([p]) if out[0] is not None)
        alone.append((text, p.params.max_tokens, "length"))

    async def main():
        decoder = DecodeLoop(engine, max_rows=8)
        loop = asyncio.get_running_loop()
        streams = [RequestStream(loop) for _ in prompts]
        decoder.submit(prompts[:1], streams[:1])
        await asyncio.sleep(0.05)  # the first is decoding when the others arrive
        decoder.submit(prompts[1:], streams[1:])
        results = await asyncio.gather(*(collect(s) for s in streams))
        return results, decoder

    results, decoder = asyncio.run(main())
    assert results == alone
    assert decoder.rows_decoded > decoder.steps  # some steps decoded several requests at once


def test_max_rows_one_runs_requests_one_after_another(engine):
    prompts = [make_prompt(engine, 5) for _ in range(3)]

    async def main():
        decoder = DecodeLoop(engine, max_rows=1)
        loop = asyncio.get_running_loop()
        streams = [RequestStream(loop) for _ in prompts]
        decoder.submit(prompts, streams)
        await asyncio.gather(*(collect(s) for s in streams))
        return decoder

    decoder = asyncio.run(main())
    assert decoder.rows_decoded == decoder.steps  # never more than one row per step


def test_a_cancelled_request_stops_being_decoded(engine):
    async def main():
        decoder = DecodeLoop(engine, max_rows=4)
        loop = asyncio.get_running_loop()
        keep, drop = RequestStream(loop), RequestStream(loop)
        decoder.submit([make_prompt(engine, 30), make_prompt(engine, 1000)], [keep, drop])
        drop.cancel()
        result = await collect(keep)
        await asyncio.sleep(0.05)
        return result, decoder

    (_, tokens, reason), decoder = asyncio.run(main())
    assert (tokens, reason) == (30, "length")
    assert decoder.rows_decoded < 30 + 40  # the cancelled one did not run to its 1000 tokens


def test_a_decoding_failure_reaches_live_requests_and_the_loop_survives(engine, monkeypatch):
    async def main():
        decoder = DecodeLoop(engine, max_rows=4)
        loop = asyncio.get_running_loop()
        original = engine.step
        calls = {"n": 0}

        def flaky(batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("device lost")
            return original(batch)

        monkeypatch.setattr(engine, "step", flaky)
        doomed = RequestStream(loop)
        decoder.submit([make_prompt(engine, 10)], [doomed])
        with pytest.raises(RuntimeError, match="device lost"):
            await collect(doomed)
        monkeypatch.setattr(engine, "step", original)
        after = RequestStream(loop)
        decoder.submit([make_prompt(engine, 3)], [after])
        return await collect(after), decoder.alive()

    (_, tokens, _), alive = asyncio.run(main())
    assert tokens == 3 and alive


def _paced_chunks(interval_s: float, steps: int, gap_s: float) -> tuple[list[StepOutput], list[float], float]:
    """A stream fed from another thread, as the decoding loop feeds it: the first step, 0.1 s later the
    second, then one every `gap_s`; returns the chunks, when each arrived, and when the last step came."""
    delivered: list[float] = []

    async def main():
        loop = asyncio.get_running_loop()
        stream = RequestStream(loop, interval_s)

        def produce():
            for i in range(1, steps + 1):
                time.sleep(gap_s if i != 2 else 0.1)  # the first token alone for a while, then a burst
                delivered.append(time.perf_counter())
                stream.deliver(StepOutput(f"t{i} ", i, "length" if i == steps else None))

        producer = threading.Thread(target=produce)
        producer.start()
        chunks, arrived = [], []
        async for out in stream:
            chunks.append(out)
            arrived.append(time.perf_counter())
        producer.join()
        return chunks, arrived

    chunks, arrived = asyncio.run(main())
    return chunks, arrived, delivered[-1]


def test_a_paced_stream_sends_a_chunk_per_interval_and_the_first_token_alone():
    chunks, _, _ = _paced_chunks(interval_s=0.05, steps=40, gap_s=0.005)
    assert "".join(c.text for c in chunks) == "".join(f"t{i} " for i in range(1, 41))
    assert chunks[0].text == "t1 " and chunks[0].completion_tokens == 1  # the first token goes out alone
    assert (chunks[-1].completion_tokens, chunks[-1].finish_reason) == (40, "length")
    assert all(c.finish_reason is None for c in chunks[:-1])
    # 39 steps over >= 0.3 s at one chunk per 50 ms: a handful of chunks, not one per step.
    assert 2 <= len(chunks) <= 12


def test_a_paced_stream_sends_the_end_when_it_is_decoded_not_an_interval_later():
    chunks, arrived, last_delivered = _paced_chunks(interval_s=1.0, steps=10, gap_s=0.01)
    assert [c.completion_tokens for c in chunks] == [1, 10]  # the first token, then the rest and the end
    assert arrived[-1] - last_delivered < 0.5  # held back, it would have waited out the 1 s interval


def test_a_stream_read_whole_releases_the_first_output_and_the_end_only():
    """A non-streamed request's stream (interval inf): the event loop wakes twice, not once per interval."""
    chunks, _, _ = _paced_chunks(interval_s=math.inf, steps=30, gap_s=0.01)
    assert [c.completion_tokens for c in chunks] == [1, 30]
    assert "".join(c.text for c in chunks) == "".join(f"t{i} " for i in range(1, 31))


def test_an_unpaced_stream_sends_steps_as_they_come():
    chunks, _, _ = _paced_chunks(interval_s=0.0, steps=20, gap_s=0.01)
    assert "".join(c.text for c in chunks) == "".join(f"t{i} " for i in range(1, 21))
    assert len(chunks) >= 10  # steps 10 ms apart are not merged without pacing


def test_flush_releases_what_a_paced_stream_holds_back():
    """The decoding loop flushes before a prefill (which takes many steps' time): held-back text goes out."""

    async def main():
        loop = asyncio.get_running_loop()
        stream = RequestStream(loop, interval_s=60.0)
        chunks = []

        async def consume():
            async for out in stream:
                chunks.append(out)

        consumer = asyncio.create_task(consume())
        stream.deliver(StepOutput("a", 1))  # the first token: released at once
        await asyncio.sleep(0.1)
        stream.deliver(StepOutput("b", 2))  # held back for the interval
        await asyncio.sleep(0.2)
        held = [c.text for c in chunks]
        stream.flush()
        await asyncio.sleep(0.2)
        flushed = [c.text for c in chunks]
        stream.deliver(StepOutput("", 3, "length"))  # the end is never held back
        await asyncio.wait_for(consumer, 5)
        return held, flushed, chunks[-1]

    held, flushed, last = asyncio.run(main())
    assert held == ["a"]
    assert flushed == ["a", "b"]
    assert (last.completion_tokens, last.finish_reason) == (3, "length")
