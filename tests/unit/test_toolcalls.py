"""Tool-call parsers (hermes, qwen3_coder, glm47): whole replies, and the streaming parser fed
the same replies in random token-sized pieces."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_pio import ModelSpec
from inference_pio.toolcalls import (
    PARSERS,
    ParsedReply,
    convert_value,
    format_for,
    parse_tool_calls,
)
from inference_pio.toolstream import ToolCallDelta, ToolCallStream

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


@dataclass
class Streamed:
    """What a client accumulates from a stream (as the ``openai`` library does): the content,
    and per call index its id, name and arguments joined."""

    content: str
    calls: dict[int, dict[str, Any]]
    texts: list[str]
    stream: ToolCallStream

    def outcome(self) -> tuple[str, list[tuple[str, str]]]:
        return self.content, [(c["name"], c["arguments"]) for _, c in sorted(self.calls.items())]


def streamed(text: str, fmt: str, cuts: list[int]) -> Streamed:
    """``text`` fed to a ToolCallStream in pieces cut at ``cuts``, accumulated."""
    stream = ToolCallStream(fmt, TOOLS)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    out: list[str | ToolCallDelta] = []
    for a, b in itertools.pairwise(bounds):
        out += stream.feed(text[a:b])
    out += stream.finish()
    texts = [p for p in out if isinstance(p, str)]
    calls: dict[int, dict[str, Any]] = {}
    for delta in (p for p in out if isinstance(p, ToolCallDelta)):
        if delta.name is not None:
            assert delta.index not in calls, "a call starts once"
            assert delta.index == len(calls), "calls start in index order"
            assert delta.arguments == ""
            calls[delta.index] = {"id": delta.id, "name": delta.name, "arguments": ""}
        else:
            assert delta.arguments, "no empty argument pieces"
            calls[delta.index]["arguments"] += delta.arguments
    assert stream.announced == len(calls)
    return Streamed("".join(texts), calls, texts, stream)


def same_as_whole(fmt: str, text: str, cuts: list[int]) -> Streamed:
    """Streamed in pieces, ``text`` gives what it gives in one piece, and the calls of the
    whole-text parse (the same ids in ``stream.calls`` as streamed); unless a call announced
    broke off (``broken``), the same content and calls as the whole-text parse."""
    whole = parse_tool_calls(text, fmt, TOOLS)
    got = streamed(text, fmt, cuts)
    assert got.outcome() == streamed(text, fmt, []).outcome()
    want_calls = [(c.name, c.arguments) for c in whole.tool_calls]
    stream = got.stream
    assert [(c.name, c.arguments) for c in stream.calls] == want_calls
    assert stream.announced == len(whole.tool_calls) + stream.broken
    by_id = {c["id"]: (c["name"], c["arguments"]) for c in got.calls.values()}
    assert [by_id[c.id] for c in stream.calls] == want_calls
    if not stream.broken:
        assert got.outcome() == (whole.content or "", want_calls)
    assert all(got.texts), "no empty text pieces"
    if not whole.tool_calls and not stream.broken:
        assert whole.content == text
    return got


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
    assert stream.feed('_call>\n{"name": "f", "arguments": ') == []
    start, brace = stream.feed("{")
    assert brace == ToolCallDelta(0, "{")
    assert isinstance(start, ToolCallDelta)
    assert (start.index, start.name, start.arguments) == (0, "f", "")
    assert start.id is not None
    assert start.id.startswith("call_")
    assert stream.feed('"a": 1') == [ToolCallDelta(0, '"a": 1')]
    assert stream.feed("}}\n</tool") == [ToolCallDelta(0, "}")]  # not the wrapper's brace
    assert stream.feed("_call>") == []
    assert stream.finish() == []
    (call,) = stream.calls
    assert (call.name, call.arguments, call.id) == ("f", '{"a": 1}', start.id)
    held = ToolCallStream("hermes")
    assert held.feed("\n\n") == []  # whitespace waits: it is dropped if a call follows
    assert held.finish() == ["\n\n"]  # no call came: it is the answer


def deltas(fmt: str, pieces: list[str]) -> list[list[str | ToolCallDelta]]:
    stream = ToolCallStream(fmt, TOOLS)
    out = [stream.feed(p) for p in pieces]
    return [*out, stream.finish()]


def arguments(events: list[str | ToolCallDelta]) -> list[str]:
    return [e.arguments for e in events if isinstance(e, ToolCallDelta) and e.name is None]


def test_hermes_arguments_stream_as_written() -> None:
    """The arguments go out as the model writes them (spacing, escapes and all), in the
    non-streamed reply too; the wrapper's closing brace is not theirs."""
    raw = '{"city":"Z\\u00fcrich",  "days": [1,\n2], "s": "}{\\"x"}'
    text = f'<tool_call>\n{{"name": "get_weather", "arguments": {raw}}}\n</tool_call>'
    whole = parse_tool_calls(text, "hermes")
    assert whole.tool_calls[0].arguments == raw
    assert json.loads(raw)["s"] == '}{"x'
    steps = deltas("hermes", [text[k : k + 3] for k in range(0, len(text), 3)])
    pieces = [a for step in steps for a in arguments(step)]
    assert len(pieces) > 5
    assert "".join(pieces) == raw
    # written another way, the call is re-serialized and goes out whole at its end
    other = '<tool_call>{"arguments": {"a":1}, "name": "f"}</tool_call>'
    assert parse_tool_calls(other, "hermes").tool_calls[0].arguments == '{"a": 1}'
    steps = deltas("hermes", list(other))
    assert [arguments(s) for s in steps if arguments(s)] == [['{"a": 1}']]


def test_xml_formats_stream_one_parameter_at_a_time() -> None:
    text = coder("get_weather", {"city": "Bern", "days": "3", "hours": "[1, 2]"})
    steps = deltas("qwen3_coder", list(text))
    pieces = [a for step in steps for a in arguments(step)]
    assert pieces == ["{", '"city": "Bern"', ', "days": 3', ', "hours": [1, 2]', "}"]
    text = glm("get_weather", {"city": "Bern", "days": "3"})
    steps = deltas("glm47", list(text))
    pieces = [a for step in steps for a in arguments(step)]
    assert pieces == ["{", '"city": "Bern"', ', "days": 3', "}"]
    assert "".join(pieces) == parse_tool_calls(text, "glm47", TOOLS).tool_calls[0].arguments


@pytest.mark.parametrize(
    ("fmt", "text", "want"),
    [
        ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1}, "name": "g"}</tool_call>', "f"),
        ("qwen3_coder", coder("f", {"a": "1"})[:-24] + "<parameter=a>\n2\n</parameter>\n"
         "</function>\n</tool_call>", {"a": "1"}),
        ("glm47", "<tool_call>f<arg_key>a</arg_key><arg_value>1</arg_value>"
         "<arg_key>a</arg_key><arg_value>2</arg_value></tool_call>", {"a": 1}),
    ],
)  # fmt: skip
def test_a_key_written_twice_keeps_its_first_value(fmt: str, text: str, want: Any) -> None:
    (call,) = parse_tool_calls(text, fmt).tool_calls
    if fmt == "hermes":
        assert call.name == want
    else:
        assert json.loads(call.arguments) == want
    assert not same_as_whole(fmt, text, list(range(len(text)))).stream.broken


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1'),  # the reply ends
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1}} junk</tool_call>'),
        ("qwen3_coder", "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n"),
        ("glm47", "<tool_call>f<arg_key>a</arg_key><arg_value>1</arg_value>junk</tool_call>"),
    ],
)
def test_a_call_announced_that_breaks_off_stays_as_sent(fmt: str, text: str) -> None:
    """The whole-text parse makes such a block text; a stream has announced it already: it
    stays a call (broken), its arguments as far as they went, and its text is not content."""
    assert parse_tool_calls(text, fmt).tool_calls == []
    got = same_as_whole(fmt, text, [5, 17])
    assert got.stream.broken == 1
    assert got.content == ""
    assert got.calls[0]["name"] == "f"
    assert got.calls[0]["arguments"].startswith("{")


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


#: Pieces of each format's markup, cut where a model's tokens may cut them.
MARKUP_FRAGMENTS = {
    "hermes": [
        "<tool_call>", "</tool_call>", "</tool_", "\n", " ", '{"name": "f", "arguments": ',
        '{"name": ', '"get_weather"', ', "arguments": ', "{", "}", "[", "]", '"a"', ": ", "1",
        ", ", '"}\\"{"', '"x', "\\", "NaN", '"name"',
    ],
    "qwen3_coder": [
        "<tool_call>", "</tool_call>", "\n", " ", "x", "<function=f>", "<function=get_weather>",
        "<function=", "<parameter=days>", "<parameter=city>", "<parameter=", "2", "</parameter>",
        "</param", "</function>", "</func", ">",
    ],
    "glm47": [
        "<tool_call>", "</tool_call>", "\n", " ", "f", "get_weather", "<arg_key>", "</arg_key>",
        "<arg_", "days", "city", "<arg_value>", "</arg_value>", "</arg_val", "3", '"q"', "[1,",
    ],
}  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(data=st.data(), fmt=st.sampled_from(sorted(MARKUP_FRAGMENTS)))
def test_any_mix_of_markup_pieces_streams_like_the_whole(fmt: str, data: st.DataObject) -> None:
    """Pieces of one format's markup in any order: a call that parses in the whole text is
    streamed exactly (never broken), whatever the cuts."""
    parts = data.draw(st.lists(st.sampled_from(MARKUP_FRAGMENTS[fmt]), max_size=24))
    text = "".join(parts)
    cuts = data.draw(st.lists(st.integers(0, max(len(text), 1)), max_size=16))
    same_as_whole(fmt, text, cuts)


#: Parameter values that look like markup, JSON or nothing at all.
VALUES = st.sampled_from(
    ["x", "", "3", "-2.5", "true", "null", "[1, 2]", '{"u": "C"}', "a\nb", "</parameter>",
     "<parameter=x>", "</function>", "}", '"', "東京 🌧", "  spaced  ", "\n"]
)  # fmt: skip
KEYS = st.sampled_from(["city", "days", "ratio", "metric", "options", "hours", "note", "zip", "k"])


def call_text(fmt: str, name: str, params: list[tuple[str, str]]) -> str:
    if fmt == "qwen3_coder":
        body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params)
        return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"
    if fmt == "glm47":
        return glm(name, dict(params), sep="\n")
    args: dict[str, Any] = {}
    for k, v in params:
        args.setdefault(k, v)
    return hermes(name, args)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    fmt=st.sampled_from(sorted(PARSERS)),
    calls=st.lists(
        st.tuples(st.sampled_from(["get_weather", "f"]), st.lists(st.tuples(KEYS, VALUES))),
        min_size=1,
        max_size=3,
    ),
    glue=st.sampled_from(["", "\n", " then "]),
)
def test_well_formed_calls_stream_exactly(
    fmt: str, calls: list[tuple[str, list[tuple[str, str]]]], glue: str, data: st.DataObject
) -> None:
    text = glue.join(call_text(fmt, name, params) for name, params in calls)
    whole = parse_tool_calls(text, fmt, TOOLS)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=40))
    got = same_as_whole(fmt, text, cuts)
    if fmt != "qwen3_coder" or not any("<parameter=" in v for _, p in calls for _, v in p):
        assert len(whole.tool_calls) == len(calls)  # (a value holding "<parameter=" ends early)
    assert got.stream.broken == 0


@pytest.mark.parametrize(
    ("schema", "text", "want"),
    [
        ({"type": ["integer", "string"]}, '"abc"', "abc"),
        ({"type": ["integer", "string"]}, "7", 7),
        ({"type": ["integer", "string"]}, "abc", "abc"),
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, '"abc"', "abc"),
        ({"type": ["boolean", "string"]}, '"maybe"', "maybe"),
        ({"type": ["boolean", "string"]}, "maybe", "maybe"),
        ({"type": ["boolean", "string"]}, "true", True),
        ({"type": ["number", "null"]}, "1.5", 1.5),
    ],
)
def test_union_types_take_the_json_value_a_forced_call_writes(
    schema: Any, text: str, want: Any
) -> None:
    """A forced call writes a union-typed parameter as JSON (a string in quotes): the
    client gets the string, not its quotes."""
    got = convert_value(text, schema)
    assert got == want
    assert type(got) is type(want)


def test_oneof_and_single_allof_parameters_are_typed_by_their_options() -> None:
    """pydantic v1 writes a nested model as ``{"allOf": [{"$ref": ...}]}``; JSON Schema's
    ``oneOf`` lists types as ``anyOf`` does: neither is a string parameter."""
    params = {
        "type": "object",
        "$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string"}}}},
        "properties": {
            "item": {"allOf": [{"$ref": "#/$defs/Item"}], "description": "the item"},
            "n": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
        },
    }
    tools = [{"type": "function", "function": {"name": "f", "parameters": params}}]
    text = (
        '<tool_call>\n<function=f>\n<parameter=item>\n{"sku": "A1"}\n</parameter>\n'
        "<parameter=n>\ntrue\n</parameter>\n</function>\n</tool_call>"
    )
    (call,) = parse_tool_calls(text, "qwen3_coder", tools).tool_calls
    assert json.loads(call.arguments) == {"item": {"sku": "A1"}, "n": True}


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (
            "qwen3_coder",
            "ok\n<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</function>\n",
        ),
        ("hermes", 'ok\n<tool_call>\n{"name": "f", "arguments": {"a": "1"}}\n'),
    ],
)
def test_a_whole_call_the_reply_ended_in_counts(fmt: str, text: str) -> None:
    """Qwen3-Coder may stop after ``</function>`` without ``</tool_call>`` (vLLM's parsers
    read such a call): the call counts, whole and streamed alike."""
    (call,) = parse_tool_calls(text, fmt).tool_calls
    assert (call.name, json.loads(call.arguments)) == ("f", {"a": "1"})
    stream = ToolCallStream(fmt)
    events = [e for piece in text for e in stream.feed(piece)] + stream.finish()
    assert stream.broken == 0
    assert [(c.name, c.arguments) for c in stream.calls] == [(call.name, call.arguments)]
    assert "".join(e for e in events if isinstance(e, str)) == "ok\n"
