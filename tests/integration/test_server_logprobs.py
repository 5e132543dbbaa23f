"""Log probabilities through the OpenAI server with the real ``openai`` client, on a tiny random
f32 Qwen3 checkpoint: chat ``logprobs`` / ``top_logprobs`` and legacy completions ``logprobs``
against transformers' log_softmax of the same prefixes, streamed equal to not streamed, batched
equal to alone, and bad values refused."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inference_pio.server import create_app  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402
from inference_pio.tokenizer.utf8 import decode_utf8  # noqa: E402

NAME = "tiny-qwen3-f32"
TOL = 1e-3  # against transformers (f32 checkpoint)
served_app: Any = None


def tiny_config() -> Any:
    """Byte tokens and an eos only (vocab 258), untied embeddings: with this seed the greedy
    answers vary, split UTF-8 characters over tokens and hold invalid bytes (a tied random model
    repeats its last token)."""
    cfg = tiny_qwen3_config(vocab_size=258, tie_word_embeddings=False)
    return transformers.Qwen3Config(**cfg)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, str]]:
    """The model, its transformers reference and the server's URL."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("served-logprobs")
    ref = save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, tiny_config(), seed=2, eos_id=257)
    model = load(d)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    global served_app
    served_app = create_app(model, NAME)
    server = uvicorn.Server(
        uvicorn.Config(served_app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    yield model, ref, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def client(url: str) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def reference_logprobs(ref: Any, prompt: list[int], tokens: list[int]) -> Any:
    """transformers' log_softmax of the logits after each prefix ``prompt + tokens[:j]``."""
    with torch.no_grad():
        logits = ref(torch.tensor([prompt + tokens])).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)], -1)


def strings(model: Any, token_id: int) -> tuple[str, list[int]]:
    raw = model.tokenizer.token_bytes(token_id)
    return decode_utf8(raw), list(raw)


def check_against_reference(model: Any, ref: Any, prompt: list[int], want: Any, k: int) -> None:
    """The Python API's result (which the server's answers are compared with) against
    transformers: each chosen token's logprob and the top k within TOL."""
    lp = reference_logprobs(ref, prompt, want.token_ids)
    for j, entry in enumerate(want.logprobs):
        assert entry.logprob == pytest.approx(lp[j, entry.token_id].item(), abs=TOL)
        best = torch.topk(lp[j], k)
        assert [v for _, v in entry.top] == pytest.approx(best.values.tolist(), abs=TOL)
        for i, v in entry.top:
            assert v == pytest.approx(lp[j, i].item(), abs=TOL)


def test_chat_logprobs(served: tuple[Any, Any, str]) -> None:
    model, ref, url = served
    messages = [{"role": "user", "content": "Tell me something"}]
    got = client(url).chat.completions.create(
        model=NAME, messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=4
    )
    prompt = model.tokenize(model.apply_chat_template(messages))
    want = model.generate(prompt, max_new_tokens=12, temperature=0, logprobs=4)
    check_against_reference(model, ref, prompt, want, 4)
    choice = got.choices[0]
    assert choice.message.content == want.text
    content = choice.logprobs.content
    assert len(content) == len(want.token_ids) == got.usage.completion_tokens
    for item, entry in zip(content, want.logprobs, strict=True):
        token, raw = strings(model, entry.token_id)
        assert (item.token, item.bytes) == (token, raw)
        assert item.logprob == pytest.approx(entry.logprob, abs=1e-6)
        assert len(item.top_logprobs) == 4
        for alt, (i, v) in zip(item.top_logprobs, entry.top, strict=True):
            assert (alt.token, alt.bytes) == strings(model, i)
            assert alt.logprob == pytest.approx(v, abs=1e-6)
    # the raw bytes of the tokens join to the text
    assert decode_utf8(b"".join(bytes(item.bytes) for item in content)) == choice.message.content

    plain = client(url).chat.completions.create(
        model=NAME, messages=messages, max_tokens=12, temperature=0, logprobs=True
    )
    assert [i.top_logprobs for i in plain.choices[0].logprobs.content] == [[]] * len(content)
    assert [i.logprob for i in plain.choices[0].logprobs.content] == [i.logprob for i in content]
    off = client(url).chat.completions.create(
        model=NAME, messages=messages, max_tokens=4, temperature=0
    )
    assert off.choices[0].logprobs is None


def test_completion_logprobs(served: tuple[Any, Any, str]) -> None:
    model, ref, url = served
    prompt = [72, 101, 108, 108, 111, 32]
    got = client(url).completions.create(
        model=NAME, prompt=prompt, max_tokens=10, temperature=0, logprobs=3
    )
    want = model.generate(prompt, max_new_tokens=10, temperature=0, logprobs=3)
    check_against_reference(model, ref, prompt, want, 3)
    lp = got.choices[0].logprobs
    assert got.choices[0].text == want.text
    assert lp.tokens == [strings(model, e.token_id)[0] for e in want.logprobs]
    assert lp.token_logprobs == pytest.approx([e.logprob for e in want.logprobs], abs=1e-6)
    offsets = [sum(len(t) for t in lp.tokens[:j]) for j in range(len(lp.tokens))]
    assert lp.text_offset == offsets
    for top, entry in zip(lp.top_logprobs, want.logprobs, strict=True):
        token = strings(model, entry.token_id)[0]
        assert top[token] == pytest.approx(entry.logprob, abs=1e-6)  # the chosen one is there
        expect: dict[str, float] = {token: entry.logprob}
        for i, v in entry.top:
            expect.setdefault(strings(model, i)[0], v)
        assert top == pytest.approx(expect, abs=1e-6)
    zero = client(url).completions.create(
        model=NAME, prompt=prompt, max_tokens=10, temperature=0, logprobs=0
    )
    assert zero.choices[0].logprobs.token_logprobs == lp.token_logprobs
    assert all(len(t) == 1 for t in zero.choices[0].logprobs.top_logprobs)


def chat_stream(url: str, exact: bool, **kw: Any) -> tuple[list[Any], str, int]:
    """A streamed chat's logprobs entries, text and number of chunks with text; ``exact``: each
    chunk's entries are checked to be those of its text (no stop string cuts it)."""
    chunks = list(client(url).chat.completions.create(model=NAME, stream=True, **kw))
    entries = []
    for c in chunks:
        choice = c.choices[0]
        if choice.logprobs is not None:
            part = choice.logprobs.content
            if exact and choice.delta.content:
                raw = b"".join(bytes(i.bytes) for i in part)
                assert decode_utf8(raw) == choice.delta.content
            entries += part
        elif choice.delta.content:
            raise AssertionError("a chunk with text but no logprobs")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    return entries, text, sum(1 for c in chunks if c.choices[0].delta.content)


def a_stop_in(text: str) -> list[str]:
    """A two-character stop string from the middle of ``text`` (no replacement character)."""
    i = next(i for i in range(len(text) // 3, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    return [text[i : i + 2]]


@pytest.mark.parametrize("with_stop", [False, True])
def test_streaming_equals_not_streaming(served: tuple[Any, Any, str], with_stop: bool) -> None:
    """Streamed chunks carry the entries of the tokens of their text (a split UTF-8 character's
    tokens with the chunk that shows it); joined, they equal the non-streamed answer's."""
    _, _, url = served
    messages = [{"role": "user", "content": "Stream it"}]
    kw: dict[str, Any] = dict(
        messages=messages, max_tokens=24, temperature=0, logprobs=True, top_logprobs=2
    )
    if with_stop:
        first = client(url).chat.completions.create(model=NAME, **kw)
        kw["stop"] = a_stop_in(first.choices[0].message.content)
    whole = client(url).chat.completions.create(model=NAME, **kw)
    entries, text, pieces = chat_stream(url, not with_stop, **kw)
    assert text == whole.choices[0].message.content
    assert [e.model_dump() for e in entries] == [
        e.model_dump() for e in whole.choices[0].logprobs.content
    ]
    assert 1 < pieces < len(entries)  # several chunks, some tokens held back
    if with_stop:
        assert whole.choices[0].finish_reason == "stop"
        assert len(entries) < 24

    prompt = [200, 201, 65, 66]
    ckw: dict[str, Any] = dict(prompt=prompt, max_tokens=24, temperature=0, logprobs=2)
    if with_stop:
        first = client(url).completions.create(model=NAME, **ckw)
        ckw["stop"] = a_stop_in(first.choices[0].text)
    one = client(url).completions.create(model=NAME, **ckw).choices[0].logprobs
    chunks = list(client(url).completions.create(model=NAME, stream=True, **ckw))
    merged: dict[str, list[Any]] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    for c in chunks:
        lp = c.choices[0].logprobs
        if lp is not None:
            for key, values in merged.items():
                values += getattr(lp, key)
    assert merged == {key: getattr(one, key) for key in merged}


def test_batched_requests_with_and_without_logprobs(served: tuple[Any, Any, str]) -> None:
    """Concurrent requests, some with logprobs: each gets its tokens (and logprobs) alone."""
    model, _, url = served
    prompts = [[65 + i, 66, 67 + 2 * i, 32] for i in range(6)]
    manager = served_app.state.service.manager
    before = len(manager.decode_batch_sizes)

    def ask(i: int) -> Any:
        extra = {"logprobs": i % 3} if i % 2 else {}
        return client(url).completions.create(
            model=NAME, prompt=prompts[i], max_tokens=20, temperature=0, **extra
        )

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    for i, got in enumerate(answers):
        k = i % 3 if i % 2 else None
        want = model.generate(prompts[i], max_new_tokens=20, temperature=0, logprobs=k)
        assert got.choices[0].text == want.text
        if k is None:
            assert got.choices[0].logprobs is None
            continue
        values = got.choices[0].logprobs.token_logprobs
        assert values == pytest.approx([e.logprob for e in want.logprobs], abs=1e-5)
    assert max(manager.decode_batch_sizes[before:]) > 1


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        ("chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("chat/completions", {"logprobs": True, "top_logprobs": "3"}, "top_logprobs"),
        ("chat/completions", {"logprobs": "yes"}, "logprobs"),
        ("chat/completions", {"logprobs": 3}, "logprobs"),
        ("chat/completions", {"top_logprobs": 3}, "top_logprobs"),
        ("completions", {"logprobs": 6}, "logprobs"),
        ("completions", {"logprobs": -1}, "logprobs"),
        ("completions", {"logprobs": True}, "logprobs"),
        ("completions", {"logprobs": 2.5}, "logprobs"),
        ("completions", {"top_logprobs": 2}, "top_logprobs"),
        ("completions", {"logprobs": 2, "echo": True}, "echo"),
    ],
)
def test_bad_values_are_400(
    served: tuple[Any, Any, str], route: str, fields: dict[str, Any], param: str
) -> None:
    _, _, url = served
    body: dict[str, Any] = {"model": NAME, "max_tokens": 2, **fields}
    if route == "completions":
        body["prompt"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    req = urllib.request.Request(
        f"{url}/v1/{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    assert info.value.code == 400
    error = json.loads(info.value.read())["error"]
    assert error["param"] == param
    assert param in error["message"]
