"""String ``pattern``s of forced tool calls: the XML formats' grammars (``qwen3_coder``,
``glm47``) take exactly the values that hermes's (llguidance's JSON schemas) take, a pattern
being a search as JSON Schema means it; patterns that cannot be compiled or enforced are a clear
ValueError. Checked byte by byte with llguidance's matcher over a byte-level vocabulary."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

llg = pytest.importorskip("llguidance")

from inference_pio.structured import Constraint, tool_call_constraint  # noqa: E402
from inference_pio.structured.pattern import search_regex  # noqa: E402

EOS = 256


class _Bytes:
    """A vocabulary of the 256 bytes and an end-of-text token."""

    tokens: ClassVar[list[bytes]] = [bytes([i]) for i in range(256)] + [b""]
    special_token_ids: ClassVar[list[int]] = [EOS]
    eos_token_id = EOS
    bos_token_id = None

    def __call__(self, text: str) -> list[int]:
        return list(text.encode())


TOKENIZER = llg.LLTokenizer(llg.TokenizerWrapper(_Bytes()))


def accepts(constraint: Constraint, text: str) -> bool:
    """The whole of ``text`` is an output the constraint allows."""
    matcher = llg.LLMatcher(TOKENIZER, constraint.grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    data = list(text.encode())
    return matcher.try_consume_tokens(data) == len(data) and matcher.is_accepting()


def tool(prop: dict[str, Any]) -> dict[str, Any]:
    params = {"type": "object", "properties": {"p": prop}, "required": ["p"]}
    return {"type": "function", "function": {"name": "f", "parameters": params}}


def call(fmt: str, value: str) -> str:
    """The forced call of ``f(p=value)`` as the format writes it."""
    if fmt == "hermes":
        args = json.dumps({"p": value}, ensure_ascii=False)
        return f'<tool_call>\n{{"name": "f", "arguments": {args}}}\n</tool_call>'
    if fmt == "qwen3_coder":
        return (
            f"<tool_call>\n<function=f>\n<parameter=p>\n{value}\n</parameter>\n"
            "</function>\n</tool_call>"
        )
    return f"<tool_call>f<arg_key>p</arg_key><arg_value>{value}</arg_value></tool_call>"


PATTERNS = [
    "a+",
    "^a+$",
    "^a+",
    "a+$",
    "b|^c$",
    "a$|^b",
    "^a|b$",
    "(?i)ab",
    "(?i)^a|b",
    "^x|a(?i)b|c",
    r"\d{2}",
    r"^\d{2}$",
    r"^[\w-]+$",
    r"\Aa\z",
    "^$",
    "foo|bar",
    "^(a|b)$",
    "^(?:a|bc)$",
    "^^a$$",
    r"\^a\$",
    "[$^]a",
    "[]a]",
    "[^]a]+$",
    "^[[:alpha:]]+$",
    r"^\p{L}+$",
    "^.$",
    "a/b",
    "x*",
    "^[A-Z]{2}-[0-9]{3}$",
]
VALUES = [
    "",
    "a",
    "aa",
    "xaay",
    "xa",
    "ax",
    "b",
    "bc",
    "c",
    "xcx",
    "AB",
    "Ab",
    "xABy",
    "C",
    "12",
    "x12y",
    "1",
    "a-b_9",
    "a b",
    "food",
    "xbarx",
    "^a",
    "a$",
    "]",
    "é",
    "Zürich",
    "a/b",
    "a\nb",
    "AB-123",
    "AB-1234",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_xml_formats_take_the_values_hermes_takes(pattern: str) -> None:
    """The same values pass, in all three formats, for every pattern and value: the XML
    grammars read a pattern as llguidance's JSON schemas do (a search, anchored by ^ / $)."""
    tools = [tool({"type": "string", "pattern": pattern})]
    grammars = {fmt: tool_call_constraint(fmt, tools, "f") for fmt in ("hermes", "qwen3_coder")}
    grammars["glm47"] = tool_call_constraint("glm47", tools, "f")
    for value in VALUES:
        got = {fmt: accepts(c, call(fmt, value)) for fmt, c in grammars.items()}
        assert len(set(got.values())) == 1, (pattern, value, got)


def test_a_pattern_is_a_search_not_a_full_match() -> None:
    """JSON Schema's reading: "a+" takes any text holding an "a"; ^ and $ anchor it."""
    for fmt in ("qwen3_coder", "glm47"):
        search = tool_call_constraint(fmt, [tool({"type": "string", "pattern": "a+"})], "f")
        whole = tool_call_constraint(fmt, [tool({"type": "string", "pattern": "^a+$"})], "f")
        assert accepts(search, call(fmt, "xaay"))
        assert not accepts(search, call(fmt, "xy"))
        assert accepts(whole, call(fmt, "aa"))
        assert not accepts(whole, call(fmt, "xaay"))


def test_a_pattern_keeps_the_lengths_enum_and_the_markup_out() -> None:
    """``pattern`` with ``minLength``/``maxLength``, ``enum``, a nullable string (pydantic's
    ``Optional``: null too where the format reads null as null), and never the markup that
    ends the value."""
    prop = {"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 4}
    for fmt in ("qwen3_coder", "glm47"):
        c = tool_call_constraint(fmt, [tool(prop)], "f")
        assert [accepts(c, call(fmt, v)) for v in ("a", "ab", "abcd", "abcde", "aB")] == [
            False,
            True,
            True,
            False,
            False,
        ]
        listed = tool_call_constraint(
            fmt, [tool({"type": "string", "enum": ["ab", "xy", "abc"], "pattern": "^a"})], "f"
        )
        assert [accepts(listed, call(fmt, v)) for v in ("ab", "xy", "abc", "a")] == [
            True,
            False,
            True,
            False,
        ]
        optional = {"anyOf": [{"type": "string", "pattern": "^[0-9]+$"}, {"type": "null"}]}
        c = tool_call_constraint(fmt, [tool(optional)], "f")
        # null where the parser reads it as null (Qwen3-Coder's); GLM's reads the string "null"
        nullable = fmt == "qwen3_coder"
        assert [accepts(c, call(fmt, v)) for v in ("12", "null", "x")] == [True, nullable, False]
        anything = tool_call_constraint(fmt, [tool({"type": "string", "pattern": "a"})], "f")
        closing = "\n</parameter>\n" if fmt == "qwen3_coder" else "</arg_value>"
        assert not accepts(anything, call(fmt, f"a{closing}a"))


def test_the_lark_regex_of_a_pattern() -> None:
    assert search_regex("a+") == "(?s:.*)(?:a+)(?s:.*)"
    assert search_regex("^a+$") == "(?:a+)"
    assert search_regex(r"^\d|x$") == "(?:[0-9])(?s:.*)|(?s:.*)(?:x)"
    assert search_regex("a/b") == r"(?s:.*)(?:a\/b)(?s:.*)"


@pytest.mark.parametrize(
    ("pattern", "match"),
    [
        ("(", "the pattern '\\(' cannot be compiled: unclosed group"),
        ("a{2,1}", "cannot be compiled: invalid repetition count range"),
        ("(?=a)", "cannot be compiled: look-around"),
        ("a^b", "cannot be compiled: lookarounds not supported"),
        ("(^a|b)c", "cannot be enforced here: \\^ and \\$ may anchor only the start and end"),
        (5, "a pattern must be a string"),
    ],
)
def test_a_pattern_that_cannot_be_compiled_is_a_clear_error(pattern: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        search_regex(pattern)


@pytest.mark.parametrize("fmt", ["hermes", "qwen3_coder", "glm47"])
def test_a_forced_call_with_a_bad_pattern_names_the_tool(fmt: str) -> None:
    bad = tool({"type": "string", "pattern": "("})
    with pytest.raises(ValueError, match=r"tool 'f': .*unclosed group"):
        tool_call_constraint(fmt, [bad], "f")


@pytest.mark.parametrize("fmt", ["qwen3_coder", "glm47"])
def test_a_pattern_hermes_takes_but_markup_cannot_is_a_clear_error(fmt: str) -> None:
    """An anchor inside a group: llguidance's JSON schemas take it, a Lark regex cannot."""
    nested = tool({"type": "string", "pattern": "(^a|b)c"})
    tool_call_constraint("hermes", [nested], "f")
    with pytest.raises(ValueError, match="tool 'f': parameter 'p': the pattern '\\(\\^a\\|b\\)c'"):
        tool_call_constraint(fmt, [nested], "f")


@pytest.mark.parametrize("fmt", ["qwen3_coder", "glm47"])
def test_enums_the_xml_formats_write_as_hermes_takes_them(fmt: str) -> None:
    """An empty string in an enum, an OpenAI-style optional enum (null listed) and a string
    enum with a non-string member: the listed strings only, as hermes's JSON."""
    cases = [
        ({"type": "string", "enum": ["", "asc"]}, ["", "asc"], ["x"]),
        ({"type": ["string", "null"], "enum": ["asc", None]}, ["asc"], ["x", "desc"]),
        ({"type": "string", "enum": ["asc", 0]}, ["asc"], ["0", "x"]),
    ]
    for prop, good, bad in cases:
        c = tool_call_constraint(fmt, [tool(prop)], "f")
        assert all(accepts(c, call(fmt, v)) for v in good), (prop, fmt)
        assert not any(accepts(c, call(fmt, v)) for v in bad), (prop, fmt)


@pytest.mark.parametrize("pattern", ["(?x)a#c", "(?ix) ^a $ ", "(?x:a b)"])
def test_verbose_patterns_are_refused_by_name(pattern: str) -> None:
    """(?x) patterns: their comments and spaces would swallow what is added around them (the
    error blamed anchors that were not there)."""
    with pytest.raises(ValueError, match=r"verbose flag \(\?x\)"):
        search_regex(pattern)
