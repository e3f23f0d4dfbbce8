"""The endpoint through Ray Serve and HTTP, driven by the official `openai` client.

One application is started for the whole module (with an API key, two allowed images, small image limits,
an image folder and a local image host), so every protocol feature and every error case meets the same
server, which must still answer afterwards.
"""

from __future__ import annotations

import glob
import http.server
import json
import os
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import SERVE_HOST, data_url, image_bytes

from mm1.data.preprocess import load_image
from mm1.model import generate_answers, load_for_inference
from services.ingress import haproxy_binary, running_ingress

APP = "mm1-openai-test"
MODEL = "tiny-mm1"
KEY_ENV = "MM1_TEST_API_KEY"
KEY = "test-key-123"
QUESTION = "how many shapes are there?"


class _ImageHost(http.server.BaseHTTPRequestHandler):
    png = image_bytes(seed=3)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/slow.png":
            time.sleep(3)
        body = self.png if self.path in ("/ok.png", "/slow.png") else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-files")
    images = root / "images"
    images.mkdir()
    (images / "cat.png").write_bytes(image_bytes(seed=4))
    (root / "outside.png").write_bytes(image_bytes(seed=5))
    return root


@pytest.fixture(scope="module")
def server(ray_session, serve_port, tiny_checkpoint, files, image_host, monkeypatch_module):
    from ray import serve

    from services.openai_app import build_app

    monkeypatch_module.setenv(KEY_ENV, KEY)
    args = {
        "checkpoint": tiny_checkpoint,
        "model_name": MODEL,
        "max_batch_size": 4,
        "batch_wait_timeout_s": 0.005,
        "api_key_env": KEY_ENV,
        "max_images": 2,
        "max_image_bytes": 200_000,
        "max_image_pixels": 300 * 300,
        "image_dir": str(files / "images"),
        "allowed_image_hosts": ["127.0.0.1"],
        "image_fetch_timeout_s": 1.0,
    }
    serve.start(http_options={"host": SERVE_HOST, "port": serve_port})
    serve.run(build_app(args), name=APP, route_prefix="/", blocking=False)
    yield f"http://{SERVE_HOST}:{serve_port}"
    serve.shutdown()  # the next module (or another team's test) may start Serve with its own HTTP options


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """The checkpoint loaded in the test process: eval's decoder and the processor, for exact expectations."""
    return load_for_inference(tiny_checkpoint)


def image_message(*urls: str, text: str = QUESTION) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def expected_prompt_tokens(processor, n_images: int, text: str = QUESTION) -> int:
    turns = [{"role": "user", "content": "\n".join(["<image>"] * n_images + [text])}]
    images = [load_image(image_bytes())] * n_images
    return processor.encode_chat(turns, images)["input_ids"].shape[1]


def assert_healthy(server: str) -> None:
    response = httpx.get(f"{server}/health", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ok"


def expect_error(server: str, call, error_class, status: int, code: str | None):
    with pytest.raises(error_class) as info:
        call()
    error = info.value
    assert error.status_code == status
    assert set(error.body) == {"message", "type", "param", "code"}, error.body
    assert error.code == code, error.body
    assert error.body["message"]
    assert_healthy(server)
    return error


# ---------------------------------------------------------------------------------------------- answers


def test_health_needs_no_key(server):
    response = httpx.get(f"{server}/health", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": MODEL}


def _listeners(port: int) -> set[str]:
    """Command names of the processes listening on TCP `port` here (from /proc: Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    names = set()
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        try:
            if any(os.readlink(os.path.join(fd_dir, fd)) in inodes for fd in os.listdir(fd_dir)):
                names.add(Path(fd_dir).parent.joinpath("comm").read_text().strip())
        except OSError:  # a process that ended, or one we may not look into
            continue
    return names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_requests_reach_the_replicas_through_haproxy_where_it_is_installed(server, serve_port):
    if haproxy_binary() is None:
        pytest.skip("no HAProxy binary here: Serve's Python proxy is the ingress")
    assert running_ingress() == "haproxy"
    assert _listeners(serve_port) == {"haproxy"}  # not Serve's Python proxy actor
    # The answer comes from the cluster's processes, not from this driver's own environment.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
        assert running_ingress() == "haproxy"
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_plain_answer_matches_eval_decoding_and_counts_image_tokens(client, reference):
    model, processor = reference
    png = image_bytes()
    response = client.chat.completions.create(
        model=MODEL, messages=image_message(data_url(png)), max_tokens=12, temperature=0
    )
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == MODEL
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens == expected_prompt_tokens(processor, 1)
    assert usage.prompt_tokens > processor.image_tokens_per_image
    assert 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    turns = [{"role": "user", "content": f"<image>\n{QUESTION}"}]
    expected = generate_answers(model, processor, [(turns, [load_image(png)])], max_new_tokens=12)[0]
    assert choice.message.content.strip() == expected


def test_streamed_answer_with_usage(client, reference):
    _, processor = reference
    messages = image_message(data_url(image_bytes()))
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *with_choices, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in with_choices)
    finishes = [c.choices[0].finish_reason for c in with_choices]
    assert finishes[-1] == plain.choices[0].finish_reason and not any(finishes[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == plain.choices[0].message.content
    assert last.usage.prompt_tokens == expected_prompt_tokens(processor, 1)
    assert last.usage.completion_tokens == plain.usage.completion_tokens


def test_stream_ends_with_done_on_the_wire(server):
    # ignore_eos: a sampled end-of-text token within the 3 would finish it with "stop" (it did, once).
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_a_client_that_goes_away_mid_stream_stops_its_decoding(server):
    from ray import serve

    stats = serve.get_app_handle(APP).decoding_stats
    before = stats.remote().result()
    assert before["engine_process"] == 1  # the default: decoding in the replica's engine process
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1500,  # seconds of decoding on this machine
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    deadline = time.monotonic() + 20
    while (now := stats.remote().result())["live"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now["live"] == 0
    assert now["steps"] - before["steps"] < 750  # dropped long before its 1500 tokens
    time.sleep(0.5)
    assert stats.remote().result()["steps"] == now["steps"]  # and nothing decodes on


def test_two_images_in_one_message(client, reference):
    _, processor = reference
    response = client.chat.completions.create(
        model=MODEL,
        messages=image_message(data_url(image_bytes(seed=1)), data_url(image_bytes(seed=2))),
        max_tokens=4,
    )
    assert response.usage.prompt_tokens == expected_prompt_tokens(processor, 2)
    text_only = expected_prompt_tokens(processor, 0)
    assert response.usage.prompt_tokens >= text_only + 2 * processor.image_tokens_per_image


def test_local_and_http_images_that_are_allowed(client, files, image_host):
    for url in ("cat.png", f"file://{files / 'images' / 'cat.png'}", f"{image_host}/ok.png"):
        response = client.chat.completions.create(model=MODEL, messages=image_message(url), max_tokens=2)
        assert response.usage.completion_tokens >= 1, url


def test_seed_and_temperature_reproduce_an_answer(client):
    def ask(seed: int) -> str:
        response = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=24,
            temperature=1.0,
            top_p=0.95,
            seed=seed,
            extra_body={"ignore_eos": True},
        )
        return response.choices[0].message.content

    first = ask(1234)
    assert ask(1234) == first
    assert ask(4321) != first


def test_stop_strings_cut_the_answer(client):
    options = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 24,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    full = client.chat.completions.create(**options).choices[0].message.content
    printable = [
        i
        for i in range(3, len(full) - 1)
        if full[i : i + 2].isprintable() and "\ufffd" not in full[i : i + 2]
    ]
    assert printable, f"no usable stop string in {full!r}"
    stop = full[printable[0] : printable[0] + 2]
    cut = full[: full.index(stop)]
    response = client.chat.completions.create(**options, stop=[stop, "never-seen-stop"])
    assert response.choices[0].message.content == cut
    assert response.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(**options, stop=stop, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(pieces) == cut


def test_max_tokens_with_ignore_eos_gives_exactly_that_many(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=7,
        extra_body={"ignore_eos": True},
    )
    assert response.usage.completion_tokens == 7
    assert response.choices[0].finish_reason == "length"


def test_system_message_is_accepted(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "hi"}],
        max_tokens=2,
    )
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert response.usage.prompt_tokens > plain.usage.prompt_tokens


# ------------------------------------------------------------------------------- OpenAI request fields

SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["count", "color"],
    "additionalProperties": False,
}


def test_logprobs_and_top_logprobs_streamed_and_not(client):
    options = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
        "extra_body": {"ignore_eos": True},
    }
    response = client.chat.completions.create(**options)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 8
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
        assert entry.logprob <= entry.top_logprobs[0].logprob + 1e-6
    raw = b"".join(bytes(entry.bytes) for entry in content)
    assert raw.decode(errors="replace") == response.choices[0].message.content
    chunks = list(client.chat.completions.create(**options, stream=True))
    streamed = [
        e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-5)
    plain = client.chat.completions.create(**{k: v for k, v in options.items() if "logprobs" not in k})
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == response.choices[0].message.content
    bare = client.chat.completions.create(**{**options, "top_logprobs": 0})
    assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)


def test_n_choices_with_a_seed_streamed_and_not(client):
    options = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 77,
        "extra_body": {"ignore_eos": True},
    }
    response = client.chat.completions.create(**options, n=3)
    assert [c.index for c in response.choices] == [0, 1, 2]
    texts = [c.message.content for c in response.choices]
    assert len(set(texts)) == 3  # each choice draws for itself
    assert response.usage.completion_tokens == 3 * 12  # summed over the choices
    assert client.chat.completions.create(**options, n=3).choices[1].message.content == texts[1]
    assert client.chat.completions.create(**options).choices[0].message.content == texts[0]
    chunks = list(
        client.chat.completions.create(**options, n=3, stream=True, stream_options={"include_usage": True})
    )
    streamed, finishes = ["", "", ""], {}
    for c in chunks:
        for choice in c.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert streamed == texts and finishes == {0: "length", 1: "length", 2: "length"}
    assert chunks[-1].usage.completion_tokens == 36


def test_json_schema_answers_parse_and_match_streamed_and_not(client):
    import jsonschema

    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "shapes", "schema": SCHEMA, "strict": True},
    }
    options = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 60,
        "response_format": response_format,
    }
    response = client.chat.completions.create(**options, n=3, temperature=1.0, seed=5)
    for choice in response.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    chunks = list(client.chat.completions.create(**options, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)
    parsed = client.chat.completions.create(**options, temperature=0).choices[0].message.content
    assert parsed == text
    cut = client.chat.completions.create(**{**options, "max_tokens": 3}, temperature=0).choices[0]
    assert cut.finish_reason == "length" and parsed.startswith(cut.message.content)  # JSON cut, as OpenAI


def test_json_object(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "answer in JSON"}],
        max_tokens=60,
        temperature=1.0,
        seed=1,
        n=2,
        response_format={"type": "json_object"},
    )
    for choice in response.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:
            assert choice.finish_reason == "length" and choice.message.content.startswith("{")
    text = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        response_format={"type": "text"},
    )
    assert text.usage.completion_tokens >= 1


# ----------------------------------------------------------------------------------------------- errors


def ask_with_images(client, *urls):
    return lambda: client.chat.completions.create(model=MODEL, messages=image_message(*urls), max_tokens=2)


def test_bad_base64(server, client):
    expect_error(
        server,
        ask_with_images(client, "data:image/png;base64,!!not*base64!!"),
        openai.BadRequestError,
        400,
        "invalid_base64",
    )


def test_bytes_that_are_no_image(server, client):
    url = data_url(b"these bytes are plain text, not an image")
    expect_error(server, ask_with_images(client, url), openai.BadRequestError, 400, "invalid_image")


def test_more_images_than_allowed(server, client):
    url = data_url(image_bytes())
    error = expect_error(
        server, ask_with_images(client, url, url, url), openai.BadRequestError, 400, "too_many_images"
    )
    assert "at most 2" in error.message


def test_image_over_the_byte_limit(server, client):
    noisy = image_bytes(290, 290, seed=9)  # random pixels do not compress: > 200 kB but < 90,000 pixels
    assert len(noisy) > 200_000
    error = expect_error(
        server, ask_with_images(client, data_url(noisy)), openai.BadRequestError, 400, "image_too_large"
    )
    assert "byte" in error.message


def test_image_over_the_pixel_limit(server, client):
    from PIL import Image

    big = Image.new("RGB", (400, 400), (200, 10, 10))  # 160,000 pixels in a few hundred bytes
    import io

    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    error = expect_error(
        server,
        ask_with_images(client, data_url(buffer.getvalue())),
        openai.BadRequestError,
        400,
        "image_too_large",
    )
    assert "400x400" in error.message


def test_prompt_over_the_context_length(server, client):
    long_text = " ".join(["how many shapes are there"] * 1500)
    call = lambda: client.chat.completions.create(  # noqa: E731
        model=MODEL, messages=[{"role": "user", "content": long_text}], max_tokens=2
    )
    error = expect_error(server, call, openai.BadRequestError, 400, "context_length_exceeded")
    assert "2048" in error.message
    too_many = lambda: client.chat.completions.create(  # noqa: E731
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5000
    )
    expect_error(server, too_many, openai.BadRequestError, 400, "context_length_exceeded")


def test_bare_base64_instead_of_a_data_url(server, client):
    import base64

    bare = base64.b64encode(image_bytes()).decode()
    error = expect_error(
        server, ask_with_images(client, bare), openai.BadRequestError, 400, "invalid_image_url"
    )
    assert "data:image/png;base64," in error.message


def test_disallowed_local_paths(server, client, files):
    for url in (str(files / "outside.png"), "../outside.png", f"file://{files / 'outside.png'}"):
        expect_error(
            server, ask_with_images(client, url), openai.BadRequestError, 400, "image_url_not_allowed"
        )


def test_disallowed_host(server, client):
    error = expect_error(
        server,
        ask_with_images(client, "https://example.com/cat.png"),
        openai.BadRequestError,
        400,
        "image_url_not_allowed",
    )
    assert "example.com" in error.message


def test_slow_image_host_times_out(server, client, image_host):
    started = time.monotonic()
    expect_error(
        server,
        ask_with_images(client, f"{image_host}/slow.png"),
        openai.BadRequestError,
        400,
        "image_fetch_timeout",
    )
    assert time.monotonic() - started < 2.9  # the 1 s deadline, not the host's 3 s


def test_unknown_model(server, client):
    call = lambda: client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])  # noqa: E731
    error = expect_error(server, call, openai.NotFoundError, 404, "model_not_found")
    assert error.param == "model"
    expect_error(
        server, lambda: client.models.retrieve("gpt-9"), openai.NotFoundError, 404, "model_not_found"
    )


def test_missing_or_wrong_api_key(server):
    messages = [{"role": "user", "content": "hi"}]
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong-key", max_retries=0)
    call = lambda: wrong.chat.completions.create(model=MODEL, messages=messages)  # noqa: E731
    expect_error(server, call, openai.AuthenticationError, 401, "invalid_api_key")
    expect_error(server, lambda: wrong.models.list(), openai.AuthenticationError, 401, "invalid_api_key")
    response = httpx.post(
        f"{server}/v1/chat/completions", json={"model": MODEL, "messages": messages}, timeout=10
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_malformed_requests_are_openai_errors_not_422(server, client):
    headers = {"Authorization": f"Bearer {KEY}"}
    cases = [
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL}, "messages"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "messages[0].content",
        ),
    ]
    for body, param in cases:
        response = httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["param"].startswith(param)
    response = httpx.post(f"{server}/v1/chat/completions", content=b"{not json", headers=headers, timeout=10)
    assert response.status_code == 400 and "error" in response.json()
    call = lambda: client.chat.completions.create(  # noqa: E731
        model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5
    )
    assert expect_error(server, call, openai.BadRequestError, 400, "invalid_request").param == "temperature"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
        ("tool_choice", "auto"),
        ("parallel_tool_calls", False),
        ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("logit_bias", {"7": 5}),
        ("frequency_penalty", 0.5),
        ("presence_penalty", -1),
        ("reasoning_effort", "low"),
        ("store", True),
    ],
)
def test_openai_fields_we_do_not_implement_are_refused_by_name(server, client, field, value):
    call = lambda: client.chat.completions.create(  # noqa: E731
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body={field: value}
    )
    error = expect_error(server, call, openai.BadRequestError, 400, "unsupported_parameter")
    assert error.param == field and field in error.message


def test_unused_values_of_those_fields_and_bookkeeping_fields_are_accepted(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        frequency_penalty=0,
        presence_penalty=0.0,
        logit_bias={},
        modalities=["text"],
        store=False,
        user="someone",
        metadata={"k": "v"},
        extra_body={"tools": [], "some_other_servers_field": 1},
    )
    assert response.usage.completion_tokens >= 1


def test_tool_calls_in_the_history_and_bad_combinations_are_refused(server, client):
    history = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "user", "content": "and?"},
    ]
    call = lambda: client.chat.completions.create(model=MODEL, messages=history, max_tokens=2)  # noqa: E731
    error = expect_error(server, call, openai.BadRequestError, 400, "unsupported_parameter")
    assert error.param == "messages[1].tool_calls"
    messages = [{"role": "user", "content": "hi"}]
    call = lambda: client.chat.completions.create(model=MODEL, messages=messages, top_logprobs=2)  # noqa: E731
    assert expect_error(server, call, openai.BadRequestError, 400, "invalid_request").param == "top_logprobs"
    for body, param in (({"top_logprobs": 21, "logprobs": True}, "top_logprobs"), ({"n": 17}, "n")):
        call = lambda body=body: client.chat.completions.create(  # noqa: E731
            model=MODEL, messages=messages, extra_body=body
        )
        assert expect_error(server, call, openai.BadRequestError, 400, "invalid_request").param == param
    call = lambda: client.chat.completions.create(  # noqa: E731
        model=MODEL,
        messages=messages,
        response_format={"type": "json_object"},
        extra_body={"ignore_eos": True},
    )
    assert expect_error(server, call, openai.BadRequestError, 400, "unsupported_value").param == "ignore_eos"
    bad_schema = {"type": "object", "properties": {"a": {"type": "no-such-type"}}}
    call = lambda: client.chat.completions.create(  # noqa: E731
        model=MODEL,
        messages=messages,
        response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": bad_schema}},
    )
    error = expect_error(server, call, openai.BadRequestError, 400, "invalid_json_schema")
    assert error.param == "response_format.json_schema.schema"


def test_server_still_answers_after_all_errors(server, client):
    assert_healthy(server)
    response = client.chat.completions.create(
        model=MODEL, messages=image_message(data_url(image_bytes())), max_tokens=3
    )
    assert response.usage.completion_tokens >= 1
