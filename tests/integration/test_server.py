"""The OpenAI-compatible server (``inference-pio serve``) with the real ``openai`` client over
HTTP, on a tiny random Qwen3 checkpoint: every answer is checked against the same model called
directly (greedy, so the tokens are determined)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

from inference_pio.server import create_app  # noqa: E402
from inference_pio.testing.serving import running  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402

NAME = "tiny-qwen3"
served_app: Any = None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("served")
    cfg = transformers.Qwen3Config(**tiny_qwen3_config(num_hidden_layers=2))
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, eos_id=511)
    model = load(d)
    global served_app
    served_app = create_app(model, NAME)
    with running(served_app) as url:
        yield model, url


def client(url: str) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_models_and_health(served: tuple[Any, str]) -> None:
    _, url = served
    assert [m.id for m in client(url).models.list().data] == [NAME]
    with urllib.request.urlopen(url + "/health") as r:
        assert json.loads(r.read()) == {"status": "ok", "model": NAME}


def test_completion_equals_the_model(served: tuple[Any, str]) -> None:
    model, url = served
    got = client(url).completions.create(
        model=NAME, prompt="The quick brown fox", max_tokens=12, temperature=0
    )
    want = model.generate("The quick brown fox", max_new_tokens=12, temperature=0)
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == want.prompt_tokens
    assert got.usage.completion_tokens == len(want.token_ids)
    ids = model.tokenize("abc")
    by_ids = client(url).completions.create(model=NAME, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == model.generate(ids, max_new_tokens=4, temperature=0).text


def test_chat_equals_the_template_and_the_model(served: tuple[Any, str]) -> None:
    model, url = served
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    got = client(url).chat.completions.create(
        model=NAME, messages=messages, max_tokens=10, temperature=0, seed=1
    )
    prompt = model.apply_chat_template(messages)
    want = model.generate(prompt, max_new_tokens=10, temperature=0)
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text
    assert got.usage.total_tokens == want.prompt_tokens + len(want.token_ids)


def test_streaming_joins_to_the_whole_answer(served: tuple[Any, str]) -> None:
    model, url = served
    messages = [{"role": "user", "content": [{"type": "text", "text": "Count"}]}]
    stream = client(url).chat.completions.create(
        model=NAME,
        messages=messages,
        max_tokens=15,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    want = model.generate(
        model.apply_chat_template([{"role": "user", "content": "Count"}]),
        max_new_tokens=15,
        temperature=0,
    )
    assert text == want.text
    assert finish == [want.finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == len(want.token_ids)
    pieces = client(url).completions.create(
        model=NAME, prompt="xyz", max_tokens=8, temperature=0, stream=True
    )
    assert (
        "".join(c.choices[0].text for c in pieces)
        == model.generate("xyz", max_new_tokens=8, temperature=0).text
    )


def test_stop_strings_and_sampling_options(served: tuple[Any, str]) -> None:
    model, url = served
    full = model.generate("hello", max_new_tokens=20, temperature=0).text
    stop = full[3:5] if len(full) >= 5 else None
    got = client(url).completions.create(
        model=NAME, prompt="hello", max_tokens=20, temperature=0, stop=stop
    )
    assert (
        got.choices[0].text
        == model.generate(
            "hello", max_new_tokens=20, temperature=0, stop=[stop] if stop else None
        ).text
    )
    ignoring = client(url).completions.create(
        model=NAME, prompt="hello", max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    want = model.generate("hello", max_new_tokens=20, temperature=0, ignore_eos=True)
    assert ignoring.choices[0].text == want.text
    assert ignoring.usage.completion_tokens == 20
    seeded = [
        client(url)
        .completions.create(
            model=NAME, prompt="hi", max_tokens=8, temperature=0.9, top_p=0.9, seed=7
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert (
        seeded[0]
        == seeded[1]
        == model.generate("hi", max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7).text
    )


def test_vllm_sampling_extensions(served: tuple[Any, str]) -> None:
    """vLLM's request extensions: stop_token_ids end the output (as in the Python API),
    top_k -1 means all tokens (vLLM's "off"), the unimplemented ones are refused, and
    stream_options needs stream (OpenAI and vLLM answer 400)."""
    model, url = served
    c = client(url)
    ids = model.generate("hello", max_new_tokens=8, temperature=0, ignore_eos=True).token_ids
    got = c.completions.create(
        model=NAME,
        prompt="hello",
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True, "stop_token_ids": [ids[2]]},
    )
    want = model.generate(
        "hello", max_new_tokens=8, temperature=0, ignore_eos=True, stop_token_ids=[ids[2]]
    )
    assert got.choices[0].finish_reason == want.finish_reason == "stop"
    assert got.usage.completion_tokens == len(want.token_ids) == ids.index(ids[2])
    assert got.choices[0].text == want.text
    all_tokens = c.completions.create(
        model=NAME, prompt="hi", max_tokens=4, temperature=0.9, seed=3, extra_body={"top_k": -1}
    )
    off = c.completions.create(
        model=NAME, prompt="hi", max_tokens=4, temperature=0.9, seed=3, extra_body={"top_k": 0}
    )
    assert all_tokens.choices[0].text == off.choices[0].text
    for extra in ({"min_tokens": 2}, {"include_stop_str_in_output": True}, {"stop_token_ids": 3}):
        with pytest.raises(openai.BadRequestError, match=next(iter(extra))):
            c.completions.create(model=NAME, prompt="x", max_tokens=2, extra_body=extra)
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        c.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": "x"}],
            max_tokens=2,
            stream_options={"include_usage": True},
        )


def test_bad_requests_get_openai_errors(served: tuple[Any, str]) -> None:
    _, url = served
    c = client(url)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        c.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.completions.create(model=NAME, prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="top_p") as info:
        c.completions.create(model=NAME, prompt="x", max_tokens=2, top_p=1.5)
    assert info.value.body["param"] == "top_p"
    with pytest.raises(openai.BadRequestError, match="ignore_eos"):
        c.completions.create(model=NAME, prompt="x", max_tokens=2, extra_body={"ignore_eos": 1})
    with pytest.raises(openai.BadRequestError, match="n = 1"):
        c.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "x"}], n=2, max_tokens=2
        )
    with pytest.raises(openai.BadRequestError, match="does not take images"):
        c.chat.completions.create(
            model=NAME,
            max_tokens=2,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                    ],
                }
            ],
        )
    with pytest.raises(openai.BadRequestError, match="context"):
        c.completions.create(model=NAME, prompt="x" * 300, max_tokens=2)
    req = urllib.request.Request(url + "/v1/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    assert info.value.code == 400
    assert json.loads(info.value.read())["error"]["type"] == "invalid_request_error"


def test_concurrent_requests_share_batches(served: tuple[Any, str]) -> None:
    """Clients at the same time: each gets the answer it gets alone, and the engine ran
    decode steps of several sequences at once (continuous batching)."""
    from concurrent.futures import ThreadPoolExecutor

    model, url = served
    prompts = [f"prompt number {i}: " + "ab" * i for i in range(6)]
    manager = served_app.state.service.manager
    before = len(manager.decode_batch_sizes)

    def ask(p: str) -> str:
        got = client(url).completions.create(model=NAME, prompt=p, max_tokens=24, temperature=0)
        return str(got.choices[0].text)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == [model.generate(p, max_new_tokens=24, temperature=0).text for p in prompts]
    assert max(manager.decode_batch_sizes[before:]) > 1


def test_bad_token_ids_and_a_failing_step_leave_the_server_working(
    served: tuple[Any, str],
) -> None:
    model, url = served
    c = client(url)
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        c.completions.create(model=NAME, prompt=[1, 2, 99999], max_tokens=2)
    # a step that fails inside the engine (a model error) answers 500 to its request only
    manager = served_app.state.service.manager
    real = manager.model.forward

    def broken(batch: Any) -> Any:
        manager.model.forward = real  # fails once
        raise RuntimeError("simulated device error")

    manager.model.forward = broken
    try:
        with pytest.raises(openai.InternalServerError, match="simulated device error"):
            c.completions.create(model=NAME, prompt="abc", max_tokens=3, temperature=0)
    finally:
        manager.model.forward = real
    got = c.completions.create(model=NAME, prompt="abc", max_tokens=3, temperature=0)
    assert got.choices[0].text == model.generate("abc", max_new_tokens=3, temperature=0).text


def test_unsupported_fields_and_unknown_routes_get_openai_errors(served: tuple[Any, str]) -> None:
    """What the server cannot honour is refused (400), never silently ignored; unknown routes
    and wrong methods answer OpenAI-style JSON too; one model can be looked up by name."""
    _, url = served
    c = client(url)
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError, match="response_format"):
        c.chat.completions.create(
            model=NAME, messages=msgs, max_tokens=2, response_format={"type": "yaml"}
        )
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        c.completions.create(model=NAME, prompt="x", max_tokens=2, logit_bias={"5": 10})
    with pytest.raises(openai.BadRequestError, match="tools"):
        c.chat.completions.create(model=NAME, messages=msgs, max_tokens=2, tool_choice="auto")
    with pytest.raises(openai.BadRequestError, match="seed"):
        c.completions.create(model=NAME, prompt="x", max_tokens=2, extra_body={"seed": 1.5})
    with pytest.raises(openai.BadRequestError, match="content"):
        c.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": None}], max_tokens=2
        )
    text = c.chat.completions.create(
        model=NAME, messages=msgs, max_tokens=2, response_format={"type": "text"}
    )
    assert text.choices[0].message.content is not None
    # OpenAI's nullable fields: null is the default (some clients send every unset field)
    for route, body in (
        ("/v1/chat/completions", {"messages": msgs}),
        ("/v1/completions", {"prompt": "x"}),
    ):
        req = urllib.request.Request(
            url + route,
            data=json.dumps(
                {"model": NAME, "max_tokens": 2, "n": None, "stream": None, **body}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req) as answer:
            assert json.loads(answer.read())["usage"]["completion_tokens"] <= 2
    assert c.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError, match="not served here"):
        c.models.retrieve("gpt-4")
    for method, path, status in (("GET", "/", 404), ("GET", "/v1/chat/completions", 405)):
        req = urllib.request.Request(url + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req)
        assert info.value.code == status
        assert path in json.loads(info.value.read())["error"]["message"]


def test_a_client_that_leaves_stops_its_plain_request(served: tuple[Any, str]) -> None:
    """A non-streamed request whose client disconnects stops at its next step instead of
    generating every token for nobody."""
    _, url = served
    manager = served_app.state.service.manager
    real = manager.model.forward

    def slow(batch: Any) -> Any:
        time.sleep(0.02)
        return real(batch)

    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": NAME, "prompt": "abc", "max_tokens": 200, "ignore_eos": True}
    ).encode()
    manager.model.forward = slow
    try:
        before = len(manager.decode_batch_sizes)
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.5)  # some steps run
        time.sleep(0.5)  # the server notices the closed connection
        stopped = len(manager.decode_batch_sizes)
        time.sleep(0.5)
        assert len(manager.decode_batch_sizes) == stopped  # no step runs any more
        assert 0 < stopped - before < 100  # 200 tokens take >= 4 s at 20 ms a step
    finally:
        manager.model.forward = real


def test_a_body_over_the_limit_is_refused_unread(served: tuple[Any, str]) -> None:
    """A declared body over the limit is answered 413 before it is read."""
    from inference_pio.server.app import MAX_BODY_BYTES

    _, url = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {MAX_BODY_BYTES + 10}\r\n\r\n".encode()
            + b'{"prompt": "'
        )
        s.settimeout(10)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            part = s.recv(65536)
            if not part:
                break
            reply += part
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert "larger than" in json.loads(body)["error"]["message"]


def test_tool_calls_and_reasoning_stay_in_the_history() -> None:
    """An assistant turn's tool_calls (arguments decoded from JSON text, as vLLM does) and
    reasoning_content, and a tool message's id, reach the chat template as in transformers
    (the server keeps them); a None content is dropped."""
    from inference_pio.server import protocol

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [call]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ]
    }
    seen: list[Any] = []
    protocol.chat_request(body, lambda messages, **kw: seen.append(messages) or "x", None)
    decoded = {**call, "function": {"name": "f", "arguments": {}}}  # JSON text to a dict
    assert seen[0] == [
        {"role": "user", "content": "go"},
        {"role": "assistant", "reasoning_content": "r", "tool_calls": [decoded]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]


def test_text_with_a_lone_surrogate_is_valid_json() -> None:
    """Sampled ids can decode to a lone surrogate (kept by the decoder); the API's UTF-8 JSON
    carries U+FFFD there instead of failing with a 500."""
    from inference_pio.generation import GenerationResult
    from inference_pio.server import protocol

    result = GenerationResult("a\udb8eb", [1, 2, 3], 2, "length")
    for body in (
        protocol.completion_body("id", NAME, result),
        protocol.chat_body("id", NAME, result),
        protocol.chunk("id", NAME, True, "\udb8e"),
    ):
        text = json.dumps(body, ensure_ascii=False).encode("utf-8").decode()
        assert "\ufffd" in text


def test_chat_without_max_tokens_is_bounded_not_256(served: tuple[Any, str]) -> None:
    """Chat completions without max_tokens get up to 4096 tokens (llama.cpp's and ollama's
    bound), capped by the context: not the 256 they stopped at, not the whole context (caches
    are sized for it up front)."""
    from inference_pio.server import protocol

    req = protocol.chat_request({"messages": [{"role": "user", "content": "x"}]}, str, None)
    assert req.sampling["max_new_tokens"] == protocol.CHAT_MAX_TOKENS == 4096
    model, url = served
    out = client(url).chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "count"}],
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert out.choices[0].finish_reason == "length"
    # the tiny model's context (256) is the bound here: prompt + output = the context (vLLM)
    assert out.usage.prompt_tokens + out.usage.completion_tokens == model.model.max_context


def test_tokenizing_does_not_block_other_clients(
    served: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt is tokenized off the event loop: while one request's tokenization is held up,
    /health still answers (it used to wait for it: a huge prompt stalled every client)."""
    model, url = served
    entered, release = threading.Event(), threading.Event()
    real = model.tokenize

    def held(text: str) -> list[int]:
        entered.set()
        release.wait(60)
        return list(real(text))

    monkeypatch.setattr(model, "tokenize", held)
    body = json.dumps({"model": NAME, "prompt": "hello", "max_tokens": 1}).encode()
    req = urllib.request.Request(
        url + "/v1/completions", body, {"Content-Type": "application/json"}
    )
    post = threading.Thread(target=lambda: urllib.request.urlopen(req, timeout=120), daemon=True)
    post.start()
    try:
        assert entered.wait(30)
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert r.status == 200
    finally:
        release.set()
        post.join(60)


def test_reasoning_history_and_text_parts_reach_the_template_as_in_vllm() -> None:
    """An assistant turn's ``reasoning`` (vLLM's field name) is kept like ``reasoning_content``,
    and several text parts of a message are joined by newlines (vLLM's string content)."""
    from inference_pio.server import protocol

    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "4", "reasoning": "r"},
            {"role": "user", "content": "more"},
        ]
    }
    seen: list[Any] = []
    protocol.chat_request(body, lambda messages, **kw: seen.append(messages) or "x", None)
    assert seen[0][0]["content"] == "a\nb"
    assert seen[0][1]["reasoning"] == "r"


def test_shutdown_cancellations_are_not_logged_as_errors() -> None:
    """A stream cancelled when the graceful shutdown times out (Ctrl-C during a long request)
    is not logged as "Exception in ASGI application" with a traceback; other errors are."""
    import asyncio
    import logging
    import sys

    from inference_pio.server.app import _ShutdownCancelFilter

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            info = sys.exc_info()
        return logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, "boom", None, info)

    keep = _ShutdownCancelFilter()
    assert not keep.filter(record(asyncio.CancelledError("timeout graceful shutdown exceeded")))
    assert keep.filter(record(RuntimeError("a real error")))
    plain = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "Started", None, None)
    assert keep.filter(plain)


def test_shutdown_ends_running_requests_with_an_error_not_a_cut(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """When serve starts shutting down (Ctrl-C / SIGTERM: begin_shutdown), a running stream
    stops and ends with an error event and [DONE] (the openai client raises it as an APIError),
    and a running plain request gets a 503, rather than both being cut off at the grace period."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("long")
    cfg = transformers.Qwen3Config(**tiny_qwen3_config(max_position_embeddings=65536))
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, eos_id=511)
    app = create_app(load(d), NAME)
    service = app.state.service

    def wait_running(want: bool) -> None:
        deadline = time.perf_counter() + 30
        while bool(service.counts()[0]) != want and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert bool(service.counts()[0]) == want

    with running(app) as url:
        body = dict(model=NAME, prompt="hello", max_tokens=60000, ignore_eos=True)
        stream = iter(
            client(url).completions.create(
                model=NAME, prompt="hello", max_tokens=60000, stream=True,
                extra_body={"ignore_eos": True},
            )
        )  # fmt: skip
        next(stream), next(stream)  # the first chunk and a token: the request is running
        app.state.begin_shutdown()
        t0 = time.perf_counter()
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in stream:
                pass
        assert time.perf_counter() - t0 < 30  # ended at once, not after 60000 tokens
        wait_running(False)  # the stopped stream's request is gone
        box: list[int] = []
        post = threading.Thread(target=lambda: box.append(_status_of(url, body)), daemon=True)
        post.start()
        wait_running(True)
        app.state.begin_shutdown()
        post.join(30)
        assert box == [503]


def _status_of(url: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
