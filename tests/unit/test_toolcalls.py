"""Tool-call parsers (hermes, qwen3_coder, glm47): whole replies, and the streaming parser fed
the same replies in random token-sized pieces."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_pio import ModelSpec
from inference_pio.toolcalls import (
    PARSERS,
    ParsedReply,
    ToolCall,
    ToolCallStream,
    convert_value,
    format_for,
    parse_tool_calls,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "ratio": {"type": "number"},
                "metric": {"type": "boolean"},
                "options": {"type": "object"},
                "hours": {"type": "array"},
                "note": {"type": ["string", "null"]},
                "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                "zip": {"type": "string"},
            },
        },
    },
}
TOOLS = [WEATHER]


def calls(reply: ParsedReply) -> list[tuple[str, Any]]:
    return [(c.name, json.loads(c.arguments)) for c in reply.tool_calls]


def hermes(name: str, args: Any) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


# ---- hermes -------------------------------------------------------------------------------------


def test_hermes_one_call_with_text_before() -> None:
    got = parse_tool_calls("Let me look.\n" + hermes("get_weather", {"city": "Paris"}), "hermes")
    assert got.content == "Let me look.\n"
    assert calls(got) == [("get_weather", {"city": "Paris"})]
    assert got.tool_calls[0].id.startswith("call_")
    assert len(got.tool_calls[0].id) == 29
    assert got.tool_calls[0].to_openai()["type"] == "function"


def test_hermes_several_calls_unicode_and_nested_json() -> None:
    nested = {"q": {"deep": [1, {"x": None, "y": [True, 2.5]}]}, "text": "héllo 東京 🌧"}
    text = (
        hermes("a", {"k": 1})
        + "\n"
        + hermes("b", nested)
        + "\n"
        + '<tool_call>\n{"name": "c", "arguments": {"s": "日本"}}\n</tool_call>'
    )
    got = parse_tool_calls(text, "hermes")
    assert got.content is None  # whitespace between calls is not content
    assert calls(got) == [("a", {"k": 1}), ("b", nested), ("c", {"s": "日本"})]
    assert "日本" in got.tool_calls[2].arguments  # not \\u-escaped
    assert len({c.id for c in got.tool_calls}) == 3


def test_hermes_text_after_and_between_calls_is_content() -> None:
    text = "A" + hermes("f", {}) + " then " + hermes("g", {}) + " done."
    got = parse_tool_calls(text, "hermes")
    assert got.content == "A then  done."
    assert [c.name for c in got.tool_calls] == ["f", "g"]


def test_hermes_arguments_absent_or_as_json_text() -> None:
    text = (
        '<tool_call>{"name": "f"}</tool_call>'
        '<tool_call>{"name": "g", "arguments": "{\\"a\\": 2}"}</tool_call>'
    )
    assert calls(parse_tool_calls(text, "hermes")) == [("f", {}), ("g", {"a": 2})]


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>\n{not json}\n</tool_call>",
        '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>',  # not an object
        '<tool_call>\n["f"]\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": {"a": 1}',  # never closed
        '<tool_call>\n{"name": "f", "arguments": {"a": NaN}}\n</tool_call>',
        "</tool_call> stray end <tool_call",
        "",
        "   \n",
        "plain answer, no calls",
    ],
)
def test_hermes_malformed_or_absent_calls_stay_text(text: str) -> None:
    got = parse_tool_calls(text, "hermes")
    assert got == ParsedReply(text, [])


def test_a_malformed_call_stays_text_next_to_good_ones() -> None:
    bad = "<tool_call>\n{oops}\n</tool_call>"
    got = parse_tool_calls("x" + bad + hermes("f", {"a": 1}), "hermes")
    assert got.content == "x" + bad
    assert calls(got) == [("f", {"a": 1})]


# ---- qwen3_coder --------------------------------------------------------------------------------


def coder(name: str, params: dict[str, str]) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def test_qwen3_coder_values_follow_the_schema() -> None:
    text = coder(
        "get_weather",
        {
            "city": "São Paulo",
            "days": "3",
            "ratio": "0.25",
            "metric": "True",
            "options": '{"unit": "C", "n": [1, 2]}',
            "hours": "[6, 12]",
            "note": "null",
            "limit": "None",
            "zip": "01234",
            "extra": "42",  # not in the schema: a string
        },
    )
    got = parse_tool_calls("I'll check." + text, "qwen3_coder", TOOLS)
    assert got.content == "I'll check."
    assert calls(got) == [
        (
            "get_weather",
            {
                "city": "São Paulo",
                "days": 3,
                "ratio": 0.25,
                "metric": True,
                "options": {"unit": "C", "n": [1, 2]},
                "hours": [6, 12],
                "note": None,
                "limit": None,
                "zip": "01234",
                "extra": "42",
            },
        )
    ]


def test_qwen3_coder_without_tools_gives_strings_and_keeps_multiline_values() -> None:
    code = "def f():\n    return '</parameter>'\n\n"
    text = coder("write_file", {"path": "a.py", "content": code}) + coder("ls", {})
    got = parse_tool_calls(text, "qwen3_coder")
    assert calls(got) == [("write_file", {"path": "a.py", "content": code}), ("ls", {})]
    assert got.content is None


@pytest.mark.parametrize(
    ("value", "schema", "want"),
    [
        ("7", {"type": "integer"}, 7),
        ("seven", {"type": "integer"}, "seven"),
        ("5.0", {"type": "number"}, 5),
        ("1e400", {"type": "number"}, "1e400"),
        ("-2.5", {"type": "float"}, -2.5),
        ("false", {"type": "boolean"}, False),
        ("yes", {"type": "boolean"}, False),
        ("null", {"type": "string"}, "null"),
        ("null", {"type": "integer"}, None),
        ("{'a': 1}", {"type": "object"}, {"a": 1}),
        ("{broken", {"type": "object"}, "{broken"),
        ("[1, 'x']", {"type": "array"}, [1, "x"]),
        ("{1, 2}", {"type": "array"}, "{1, 2}"),  # a Python set is not JSON: a string
        ("x", {}, "x"),
        ("x", None, "x"),
    ],
)
def test_convert_value(value: str, schema: Any, want: Any) -> None:
    assert convert_value(value, schema) == want


@pytest.mark.parametrize(
    "body",
    [
        "<function=f>\n<parameter=a>\n1\n</parameter>\n",  # no </function>
        "<function=f>\nstray<parameter=a>\n1\n</parameter>\n</function>",
        "<function=>\n</function>",
        "<function=two words>\n</function>",
        '{"name": "f", "arguments": {}}',
        "<function=f",
    ],
)
def test_qwen3_coder_malformed_calls_stay_text(body: str) -> None:
    text = f"<tool_call>\n{body}\n</tool_call>"
    assert parse_tool_calls(text, "qwen3_coder", TOOLS) == ParsedReply(text, [])


@pytest.mark.parametrize(
    "inner",
    [
        "<parameter=n>\n5\n</parameter>\n<parameter=s>\nhello\n</function>",
        "<parameter=n>\n5\n<parameter=s>\nhello\n</parameter>\n</function>",
        "<parameter=n>\n5\n<parameter=s>\nhello\n</function>",
    ],
)
def test_qwen3_coder_reads_a_parameter_without_its_closing_tag(inner: str) -> None:
    """Qwen3-Coder drops a </parameter> at times; the value then runs to the next parameter or
    to </function>, as vLLM's qwen3_coder parser reads it."""
    text = f"<tool_call>\n<function=f>\n{inner}\n</tool_call>"
    reply = parse_tool_calls(text, "qwen3_coder")  # no tools: values stay strings
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("f", {"n": "5", "s": "hello"})
    ]


# ---- glm47 --------------------------------------------------------------------------------------


def glm(name: str, pairs: dict[str, str], sep: str = "") -> str:
    args = "".join(
        f"{sep}<arg_key>{k}</arg_key>{sep}<arg_value>{v}</arg_value>" for k, v in pairs.items()
    )
    return f"<tool_call>{name}{args}</tool_call>"


def test_glm47_values_are_json_where_they_parse() -> None:
    text = "Checking.\n" + glm(
        "get_weather",
        {"city": "Zürich", "days": "2", "zip": "8001", "options": '{"a": [1]}', "free": "x y"},
    )
    got = parse_tool_calls(text, "glm47", TOOLS)
    assert got.content == "Checking.\n"
    assert calls(got) == [
        (
            "get_weather",
            {"city": "Zürich", "days": 2, "zip": "8001", "options": {"a": [1]}, "free": "x y"},
        )
    ]
    no_schema = parse_tool_calls(text, "glm47")
    assert json.loads(no_schema.tool_calls[0].arguments)["zip"] == 8001


def test_glm47_newlines_no_arguments_and_several_calls() -> None:
    text = glm("f", {"a": "true", "b": "[1, 2]"}, sep="\n") + "\n" + glm("now", {})
    got = parse_tool_calls(text, "glm47")
    assert calls(got) == [("f", {"a": True, "b": [1, 2]}), ("now", {})]
    assert got.content is None


@pytest.mark.parametrize(
    "body",
    [
        "f<arg_key>a</arg_key>",  # no value
        "f<arg_key>a</arg_key><arg_value>1",  # value never closed
        "f<arg_value>1</arg_value>",  # no key
        "<arg_key>a</arg_key><arg_value>1</arg_value>",  # no name
        "f g<arg_key>a</arg_key><arg_value>1</arg_value>",
        "f<arg_key>a</arg_key><arg_value>1</arg_value>junk",
    ],
)
def test_glm47_malformed_calls_stay_text(body: str) -> None:
    text = f"<tool_call>{body}</tool_call>"
    assert parse_tool_calls(text, "glm47") == ParsedReply(text, [])


# ---- formats, specs ----------------------------------------------------------------------------


def test_unknown_format_and_model_spec_validation() -> None:
    with pytest.raises(ValueError, match="unknown tool-call format"):
        parse_tool_calls("x", "json")
    with pytest.raises(ValueError, match="tool_call_format"):
        ModelSpec(name="m", factory="a:b", tool_call_format="mistral")
    spec = ModelSpec(name="m", factory="a:b", tool_call_format="glm47")
    assert spec.to_dict()["tool_call_format"] == "glm47"
    assert ModelSpec(name="m", factory="a:b").tool_call_format is None


def test_every_plugin_declares_its_format() -> None:
    from inference_pio.plugins import get_plugin_host

    declared = {s.name: s.tool_call_format for s in get_plugin_host().registry}
    want = {
        "qwen3-0.6b": "hermes",
        "qwen3-4b-instruct-2507": "hermes",
        "qwen3-vl-2b-instruct": "hermes",
        "qwen3-coder-30b-a3b-instruct": "qwen3_coder",
        "qwen3-coder-next": "qwen3_coder",
        "glm-4.7-flash": "glm47",
    }
    assert {k: declared[k] for k in want if k in declared} == {
        k: v for k, v in want.items() if k in declared
    }

    class Named:
        name = "qwen3-coder-next"

    class Declares:
        name = "qwen3-0.6b"
        tool_call_format = "glm47"

    if "qwen3-coder-next" in declared:
        assert format_for(Named()) == "qwen3_coder"
    assert format_for(Declares()) == "glm47"  # the model's own attribute wins
    assert format_for(object()) is None


def test_the_checkpoints_template_says_which_calls_it_teaches() -> None:
    """A checkpoint's chat template shows the call markup it trains: Qwen3-30B-A3B-Instruct
    (hermes) loads into the Coder plugin (qwen3_coder) and still gets its own format."""
    from inference_pio.synthetic.templates import QWEN3_CHAT_TEMPLATE
    from inference_pio.toolcalls import format_of_template

    coder = "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>"
    glm = "<tool_call>{{ tc.name }}<arg_key>{{ k }}</arg_key><arg_value>{{ v }}</arg_value>"
    assert format_of_template(QWEN3_CHAT_TEMPLATE) == "hermes"
    assert format_of_template(coder) == "qwen3_coder"
    assert format_of_template(glm) == "glm47"
    assert format_of_template("{{ messages }}") is None
    assert format_of_template(None) is None

    class Tok:
        chat_template = QWEN3_CHAT_TEMPLATE

    class InstructInCoderPlugin:
        name = "qwen3-coder-30b-a3b-instruct"
        tokenizer = Tok()

    assert format_for(InstructInCoderPlugin()) == "hermes"


# ---- streaming ----------------------------------------------------------------------------------

SAMPLES: dict[str, list[str]] = {
    "hermes": [
        "Let me look.\n" + hermes("get_weather", {"city": "Paris"}),
        hermes("a", {"k": 1}) + "\n" + hermes("b", {"q": {"deep": [1, {"x": "東京 🌧"}]}}),
        "A" + hermes("f", {}) + " then " + hermes("g", {}) + " done.",
        "  \n" + hermes("f", {"a": "<tool_call>"}) + "\n\n",
        "x<tool_call>\n{oops}\n</tool_call>" + hermes("f", {"a": 1}),
        '<tool_call>\n{"name": "f", "arguments": {"a": 1}',
        "no calls at all, just <tool_ text and <tool_call",
        "   \n  ",
        "<<tool_call><tool_call>" + hermes("f", {}),
        "",
    ],
    "qwen3_coder": [
        "I'll check."
        + coder("get_weather", {"city": "São Paulo", "days": "3", "options": '{"u": "C"}'}),
        coder("write_file", {"path": "a.py", "content": "x = '</parameter>'\n"})
        + "\n"
        + coder("ls", {}),
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</tool_call> tail",
    ],
    "glm47": [
        "Checking.\n" + glm("get_weather", {"city": "Zürich", "days": "2", "zip": "8001"}),
        glm("f", {"a": "true", "b": "[1, 2]"}, sep="\n") + "\n" + glm("now", {}),
        "<tool_call>f<arg_key>a</arg_key></tool_call>",
        "think first</tool_call>" + glm("g", {"x": '"quoted"'}),
    ],
}
CASES = [(fmt, text) for fmt, texts in SAMPLES.items() for text in texts]


def streamed(text: str, fmt: str, cuts: list[int]) -> tuple[str, list[ToolCall], list[str]]:
    """``text`` fed to a ToolCallStream in pieces cut at ``cuts``: the joined text, the calls
    and the text pieces."""
    stream = ToolCallStream(fmt, TOOLS)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    out: list[str | ToolCall] = []
    for a, b in itertools.pairwise(bounds):
        out += stream.feed(text[a:b])
    out += stream.finish()
    texts = [p for p in out if isinstance(p, str)]
    found = [p for p in out if isinstance(p, ToolCall)]
    assert found == stream.calls
    return "".join(texts), found, texts


def same_as_whole(fmt: str, text: str, cuts: list[int]) -> None:
    whole = parse_tool_calls(text, fmt, TOOLS)
    joined, found, texts = streamed(text, fmt, cuts)
    assert [(c.name, c.arguments) for c in found] == [
        (c.name, c.arguments) for c in whole.tool_calls
    ]
    assert joined == (whole.content or "")
    assert all(texts), "no empty text pieces"
    if not whole.tool_calls:
        assert whole.content == text


@pytest.mark.parametrize(("fmt", "text"), CASES)
def test_stream_one_character_at_a_time_and_whole(fmt: str, text: str) -> None:
    same_as_whole(fmt, text, list(range(len(text))))
    same_as_whole(fmt, text, [])


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(CASES), data=st.data())
def test_stream_in_random_token_sized_pieces_equals_the_whole(
    case: tuple[str, str], data: st.DataObject
) -> None:
    fmt, text = case
    cuts, at = [], 0
    while at < len(text):
        at += data.draw(st.integers(1, 8))
        cuts.append(at)
    same_as_whole(fmt, text, cuts)


def test_text_before_a_call_streams_before_the_call_closes() -> None:
    stream = ToolCallStream("hermes")
    assert stream.feed("Sure, <tool") == ["Sure, "]  # the partial tag is held back
    assert stream.feed('_call>\n{"name": "f", "arguments": {}}') == []
    (call,) = stream.feed("\n</tool_call>")
    assert isinstance(call, ToolCall)
    assert call.name == "f"
    assert stream.finish() == []
    held = ToolCallStream("hermes")
    assert held.feed("\n\n") == []  # whitespace waits: it is dropped if a call follows
    assert held.finish() == ["\n\n"]  # no call came: it is the answer


FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "\n",
    " ",
    "text",
    "東京",
    '{"name": "f", "arguments": {"a": 1}}',
    '{"name": "g"}',
    "{bad",
    "<function=f>",
    "<parameter=days>",
    "\n2\n",
    "</parameter>",
    "</function>",
    "get_weather",
    "<arg_key>days</arg_key>",
    "<arg_value>3</arg_value>",
]


@settings(max_examples=150, deadline=None)
@given(
    fmt=st.sampled_from(sorted(PARSERS)),
    parts=st.lists(st.sampled_from(FRAGMENTS), max_size=14),
    data=st.data(),
)
def test_any_mix_of_fragments_never_raises_and_streams_like_the_whole(
    fmt: str, parts: list[str], data: st.DataObject
) -> None:
    text = "".join(parts)
    cuts = data.draw(st.lists(st.integers(0, max(len(text), 1)), max_size=12))
    same_as_whole(fmt, text, cuts)
