"""Decoding in a child process of the replica (services.engine_process): same answers as the in-process
decoder, cancellation, and what happens when either side of the socket dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SERVE_HOST, image_bytes

from mm1.data.preprocess import load_image
from mm1.model import load_for_inference, load_processor
from services.engine import Engine, Prompt
from services.engine_process import EngineProcess
from services.sampling import SamplingParams
from services.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]


def start_engine(checkpoint: str, **settings) -> EngineProcess:
    args = ServeSettings(checkpoint=checkpoint, torch_threads=1, **settings).to_args()
    return EngineProcess(args)


def image_prompt(processor, max_tokens: int, question: str = "how many shapes are there?") -> Prompt:
    turns = [{"role": "user", "content": f"<image>\n{question}"}]
    encoded = processor.encode_chat(turns, [load_image(image_bytes(seed=3))])
    params = SamplingParams(max_tokens, temperature=0, ignore_eos=True)
    return Prompt(encoded["input_ids"][0].tolist(), encoded["pixel_values"], params)


async def answer(engine: EngineProcess, prompts: list[Prompt]) -> list[tuple[str, int, str]]:
    loop = asyncio.get_running_loop()
    streams = [engine.stream(loop, 0.0) for _ in prompts]
    engine.submit(prompts, streams)

    async def collect(stream):
        text, count, reason = [], 0, None
        async for out in stream:
            text.append(out.text)
            count, reason = out.completion_tokens, out.finish_reason or reason
        return "".join(text), count, reason

    return list(await asyncio.gather(*(collect(s) for s in streams)))


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    engine = start_engine(tiny_checkpoint, max_batch_size=4)
    yield engine
    engine.close()


def test_answers_equal_the_in_process_decoder_token_for_token(engine, tiny_checkpoint):
    model, processor = load_for_inference(tiny_checkpoint)
    prompts = [image_prompt(processor, n, q) for n, q in ((12, "what is it?"), (7, "how many?"))]
    expected = []
    for prompt in prompts:
        text, count, reason = [], 0, None
        for outputs in Engine(model, processor).generate([prompt]):
            out = outputs[0]
            if out is not None:
                text.append(out.text)
                count, reason = out.completion_tokens, out.finish_reason or reason
        expected.append(("".join(text), count, reason))
    assert asyncio.run(answer(engine, prompts)) == expected
    assert engine.context_length == Engine(model, processor).context_length
    assert engine.alive()


def test_a_cancelled_request_stops_decoding_in_the_engine(engine, tiny_checkpoint):
    processor = load_processor(tiny_checkpoint)

    async def start_then_cancel() -> None:
        loop = asyncio.get_running_loop()
        stream = engine.stream(loop, 0.0)
        engine.submit([image_prompt(processor, 1500)], [stream])
        async for out in stream:
            if out.completion_tokens >= 3:
                break
        stream.cancel()

    before = engine.steps
    asyncio.run(start_then_cancel())
    deadline = time.monotonic() + 20
    while engine.live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.live == 0
    steps = engine.steps
    assert steps - before < 750  # dropped long before its 1500 tokens
    time.sleep(0.5)
    assert engine.steps == steps  # and nothing decodes on


def test_a_dead_engine_fails_its_live_requests_and_reports_not_alive(tiny_checkpoint):
    engine = start_engine(tiny_checkpoint)
    processor = load_processor(tiny_checkpoint)

    async def killed_mid_answer() -> BaseException | None:
        loop = asyncio.get_running_loop()
        stream = engine.stream(loop, 0.0)
        engine.submit([image_prompt(processor, 1500)], [stream])
        try:
            async for out in stream:
                if out.completion_tokens >= 2 and engine.alive():
                    os.kill(engine._process.pid, signal.SIGKILL)
        except RuntimeError as exc:
            return exc
        return None

    failure = asyncio.run(asyncio.wait_for(killed_mid_answer(), 60))
    assert failure is not None and "engine process exited" in str(failure)
    assert not engine.alive()


def test_the_engine_exits_when_its_replica_is_killed(tiny_checkpoint):
    """The replica's process dies without any cleanup (kill -9): the engine sees its socket close and exits."""
    script = (
        "import sys, time\n"
        "from services.engine_process import EngineProcess\n"
        "from services.settings import ServeSettings\n"
        f"engine = EngineProcess(ServeSettings(checkpoint={tiny_checkpoint!r}).to_args())\n"
        "print(engine._process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    replica = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        engine_pid = int(replica.stdout.readline())
        os.kill(replica.pid, signal.SIGKILL)
        replica.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _running(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(engine_pid)
    finally:
        replica.kill()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_an_engine_that_cannot_load_its_model_says_why(tmp_path, tiny_checkpoint):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in Path(tiny_checkpoint).iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    with pytest.raises(RuntimeError, match="the engine process failed to start"):
        start_engine(str(broken))


def test_the_replica_can_decode_in_a_thread_instead(ray_session, serve_port, tiny_checkpoint):
    import openai
    from ray import serve

    from services.openai_app import build_app

    serve.start(http_options={"host": SERVE_HOST, "port": serve_port})
    try:
        args = {"checkpoint": tiny_checkpoint, "model_name": "threaded", "engine_process": False}
        serve.run(build_app(args), name="threaded", route_prefix="/", blocking=False)
        client = openai.OpenAI(base_url=f"http://{SERVE_HOST}:{serve_port}/v1", api_key="-", max_retries=0)
        reply = client.chat.completions.create(
            model="threaded", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
        stats = serve.get_app_handle("threaded").decoding_stats.remote().result()
        assert stats["engine_process"] == 0 and stats["steps"] + stats["prefills"] > 0
    finally:
        serve.shutdown()
