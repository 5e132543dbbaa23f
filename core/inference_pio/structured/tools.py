"""``tool_choice`` "required" or a named function as a constraint: the reply must be the
model's tool-call markup with a call (or several) whose arguments match the tool's parameters.

- ``hermes`` (Qwen3, Qwen3-VL): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
  the arguments matching the tool's JSON schema.
- ``qwen3_coder`` (Qwen3-Coder): ``<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n
  </parameter>\\n...</function>\\n</tool_call>``.
- ``glm47`` (GLM-4.7): ``<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...
  </tool_call>``.

In the XML formats the parameters are the tool's schema ``properties``, in the schema's order,
each at most once and the ``required`` ones always; a value whose property the parsers read as
a string (:func:`inference_pio.toolcalls.convert_value`) is free text (its ``enum``/``const``,
``minLength``/``maxLength`` and ``pattern`` kept, the pattern a search as in JSON Schema and
hermes's JSON: :mod:`~inference_pio.structured.pattern`; never the markup that would end it
early), any other is JSON matching the property's schema. Markup strings that the model's
tokenizer holds as special tokens (``special``: GLM-4.7's ``<tool_call>``, ``<arg_key>``, ...)
are written as those tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from inference_pio.structured.closed import close_objects
from inference_pio.structured.constraint import JSON_OPTIONS, Constraint
from inference_pio.structured.pattern import error_reason, search_regex
from inference_pio.toolcalls import _STRING_TYPES, _schema_type, _valid_name, resolve_property

#: Formats whose markup :func:`tool_call_constraint` can force.
CONSTRAINABLE_FORMATS = ("hermes", "qwen3_coder", "glm47")
#: llguidance's JSON options for tool schemas (which use any keyword in the wild).
_OPTIONS = {**JSON_OPTIONS, "lenient": True}


def _function(tool: Any) -> Mapping[str, Any]:
    fn = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise ValueError("each tool needs a 'function' with a 'name'")
    return fn


def _arguments_schema(fn: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The schema of ``fn``'s arguments, kept as a root schema of its own (its ``$ref``s to
    ``#/$defs/...`` resolve against it); a function without parameters (none, or ``{}``) takes
    none: its arguments are ``{}``."""
    params = fn.get("parameters")
    if not isinstance(params, Mapping) or not params:
        params = {"type": "object", "properties": {}, "additionalProperties": False}
    own = params.get("x-guidance")
    params = close_objects(params)  # the named parameters only, as vLLM's forced calls
    return {**params, "x-guidance": {**options, **(own if isinstance(own, Mapping) else {})}}


def _lark_string(text: str) -> str:
    """``text`` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


class _Markup:
    """Writes literal text as Lark: the markup strings that are special tokens as those tokens
    (``<[id]>``), the rest as string literals."""

    def __init__(self, special: Mapping[str, int] | None) -> None:
        self.special = dict(special or {})
        texts = sorted(self.special, key=len, reverse=True)
        self._split = re.compile("|".join(map(re.escape, texts))) if texts else None

    def __call__(self, text: str) -> str:
        parts, done = [], 0
        for found in self._split.finditer(text) if self._split is not None else ():
            if found.start() > done:
                parts.append(_quote(text[done : found.start()]))
            parts.append(f"<[{self.special[found.group()]}]>")
            done = found.end()
        if done < len(text):
            parts.append(_quote(text[done:]))
        return " ".join(parts)

    def is_token(self, text: str) -> bool:
        return text in self.special


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "/": "\\/"}


def _literal_regex(text: str) -> str:
    """The inside of a Lark ``/.../`` regex matching ``text`` literally."""
    return "".join(_CONTROL.get(c) or re.escape(c) for c in text)


def _regex(text: str) -> str:
    """``text`` as a Lark regex matching it literally."""
    return f"/{_literal_regex(text) or '(?:)'}/"  # an empty Lark regex // does not parse


def _string_spec(schema: Any) -> tuple[Mapping[str, Any], bool]:
    """The keywords of a string parameter's schema (its one string option's merged in, for an
    ``anyOf`` of a string and null: pydantic's ``Optional[str]``) and whether it admits null."""
    spec: Mapping[str, Any] = schema if isinstance(schema, Mapping) else {}
    _, nullable = _schema_type(spec)
    options = spec.get("anyOf")
    if isinstance(options, list):
        strings = [o for o in options if isinstance(o, Mapping) and o.get("type") == "string"]
        nulls = [o for o in options if isinstance(o, Mapping) and o.get("type") == "null"]
        if len(strings) == 1 and len(strings) + len(nulls) == len(options):
            spec = {**{k: v for k, v in spec.items() if k != "anyOf"}, **strings[0]}
    return spec, nullable


def _free_text(schema: Any, forbidden: Sequence[str], limit: str | None, null: bool = False) -> str:
    """A Lark terminal of a string value written as it is: one of its ``enum`` (or its
    ``const``) when it has one, else any text that holds none of ``forbidden``; within its
    ``minLength``/``maxLength`` and, where it has a ``pattern``, text in which the pattern is
    found (:func:`~inference_pio.structured.pattern.search_regex`: a search, as JSON Schema
    and llguidance's JSON schemas read it); ``null`` too for a nullable one so constrained
    when the format's parser reads ``null`` as null (``null``); followed by ``limit`` (a
    literal ending the value) when not None."""
    tail = f" {_regex(limit)}" if limit is not None else ""
    spec, nullable = _string_spec(schema)
    raw = [spec["const"]] if "const" in spec else spec.get("enum")
    listed = isinstance(raw, list)  # its strings are written as they are, the rest cannot be
    given: list[Any] = raw if isinstance(raw, list) else []
    options = [o for o in given if isinstance(o, str)]
    # an enum beside "type": [..., "null"] takes null only when it lists it (JSON Schema)
    top = schema if isinstance(schema, Mapping) else {}
    if "const" in top or "enum" in top:
        nullable = nullable and None in given
    null_ok = null and nullable
    if listed and not options and not null_ok:
        raise ValueError(f"its enum/const {given!r} has no value this format can write")
    low, high = spec.get("minLength"), spec.get("maxLength")
    low = low if isinstance(low, int) and not isinstance(low, bool) and low > 0 else 0
    high = high if isinstance(high, int) and not isinstance(high, bool) and high >= low else None
    size = "*" if low == 0 and high is None else f"{{{low},{'' if high is None else high}}}"
    pattern = spec.get("pattern")
    terms = []
    if listed:
        terms.append("(" + " | ".join(_regex(o) for o in options or ["null"]) + ")")
    if not listed or size != "*":
        terms.append(f"/(?s:.{size})/")
    if pattern is not None:
        terms.append(f"/{search_regex(pattern)}/")
    if not listed:
        banned = "|".join(_literal_regex(f) for f in forbidden)
        terms.append(f"~/(?s:.*)({banned})(?s:.*)/")
    value = "(" + " & ".join(terms) + ")"
    if null_ok and (listed or size != "*" or pattern is not None):
        value = f"({value} | /null/)"
    return value + tail


def _parameters(fn: Mapping[str, Any]) -> list[tuple[str, Any, bool]]:
    """The function's parameters in the schema's order: (name, schema, required); a required
    name the schema does not declare is taken as a string."""
    params = fn.get("parameters")
    params = params if isinstance(params, Mapping) else {}
    props = params.get("properties")
    props = props if isinstance(props, Mapping) else {}
    required = params.get("required")
    needed = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    out = [(str(k), resolve_property(v, params), k in needed) for k, v in props.items()]
    return out + [(r, {"type": "string"}, True) for r in dict.fromkeys(needed) if r not in props]


class _XmlGrammar:
    """Lark rules of forced calls in an XML format (:func:`tool_call_constraint`)."""

    def __init__(self, fmt: str, markup: _Markup) -> None:
        self.fmt, self.lit = fmt, markup
        self.rules: list[str] = []
        self.defs: dict[str, Any] = {}  # the current function's $defs / definitions
        self.forbidden: tuple[str, ...]
        if fmt == "qwen3_coder":
            self.key_open, self.key_close = "<parameter=", ">\n"
            self.value_close = "\n</parameter>\n"
            self.forbidden = ("</parameter>", "<parameter=", "</tool_call>")
        else:
            self.key_open, self.key_close = "<arg_key>", "</arg_key><arg_value>"
            self.value_close = "</arg_value>"
            self.forbidden = ("</arg_value>", "</tool_call>")

    def call(self, k: int, fn: Mapping[str, Any]) -> str:
        name = str(fn["name"])
        if not _valid_name(name):
            raise ValueError(f"the function name {name!r} cannot be written in {self.fmt} markup")
        if self.fmt == "qwen3_coder":
            head, tail = f"<tool_call>\n<function={name}>\n", "</function>\n</tool_call>"
        else:
            head, tail = f"<tool_call>{name}", "</tool_call>"
        parts = [self.lit(head)]
        params = fn.get("parameters")
        params = params if isinstance(params, Mapping) else {}
        self.defs = {k: close_objects(params[k]) for k in ("$defs", "definitions") if k in params}
        for j, (key, schema, required) in enumerate(_parameters(fn)):
            rule = f"p{k}_{j}"
            try:
                self.parameter(rule, key, schema)
            except ValueError as exc:
                raise ValueError(f"tool {name!r}: {exc}") from None
            parts.append(rule if required else f"{rule}?")
        self.rules.append(f"call{k}: {' '.join(parts)} {self.lit(tail)}")
        return f"call{k}"

    def parameter(self, rule: str, key: str, schema: Any) -> None:
        if not key.strip() or key != key.strip() or any(c in key for c in "<>"):
            raise ValueError(f"the parameter name {key!r} cannot be written in {self.fmt} markup")
        opening = self.lit(self.key_open + key + self.key_close)
        kind, _ = _schema_type(schema)
        if kind not in _STRING_TYPES:  # JSON, as the parsers read these values
            body = {
                **close_objects(schema if isinstance(schema, Mapping) else {}),
                **self.defs,  # what its $refs point to
                "x-guidance": _OPTIONS,
            }
            self.rules.append(f"{rule}_value: %json {json.dumps(body, ensure_ascii=False)}")
            self.rules.append(f"{rule}: {opening} {rule}_value {self.lit(self.value_close)}")
            return
        close_text = self.value_close.strip("\n")
        ends_at_token = self.lit.is_token(close_text)  # the value ends at a special token
        try:
            # else the value and its closing tag are one lexeme (where the value ends is clear)
            limit = None if ends_at_token else self.value_close
            # Qwen3-Coder's parser reads null as null for a nullable string; GLM's as "null"
            value = _free_text(schema, self.forbidden, limit, self.fmt == "qwen3_coder")
        except ValueError as exc:
            raise ValueError(f"parameter {key!r}: {exc}") from None
        self.rules.append(f"{rule.upper()}_TEXT: {value}")
        ending = f" {self.lit(self.value_close)}" if ends_at_token else ""
        self.rules.append(f"{rule}: {opening} {rule.upper()}_TEXT{ending}")


def tool_call_constraint(
    fmt: str | None,
    tools: Sequence[Mapping[str, Any]],
    name: str | None = None,
    parallel: bool = True,
    special: Mapping[str, int] | None = None,
) -> Constraint:
    """The reply as tool calls only, in format ``fmt``: calls of any of ``tools`` ("required"),
    or of the function ``name`` alone (a named ``tool_choice``); one call, or (``parallel``) one
    or more. ``special``: the format's markup strings that the model's tokenizer holds as
    special tokens, and their ids (:func:`inference_pio.toolcalls.markup_tokens`). ValueError
    for a format without a grammar, no tools, an unknown ``name``, or a name that the format
    cannot write."""
    if fmt not in CONSTRAINABLE_FORMATS:
        raise ValueError(
            f"forcing a tool call needs constrained decoding of the model's tool-call markup, "
            f"available for the {', '.join(CONSTRAINABLE_FORMATS)} formats; this model's "
            f"format is {fmt!r}: use tool_choice 'auto'"
        )
    functions = [_function(t) for t in tools]
    if name is not None:
        functions = [f for f in functions if f["name"] == name]
        if not functions:
            raise ValueError(f"tool_choice names the function {name!r}, which is not in 'tools'")
    if not functions:
        raise ValueError("forcing a tool call needs at least one tool")
    for fn in functions:  # each tool's own error, not one about the whole call grammar
        try:
            Constraint.json_schema(_arguments_schema(fn, _OPTIONS), closed_objects=False)
        except ValueError as exc:
            first = error_reason(exc) or type(exc).__name__
            raise ValueError(
                f"tool {fn['name']!r}: its parameters are not a JSON schema constrained decoding "
                f"can follow ({first})"
            ) from None
    lit = _Markup(special)
    calls = 'call ("\\n" call)*' if parallel else "call"
    if fmt == "hermes":
        # {"name": <the function>, "arguments": <its parameters>}, name first, written as the
        # markup's text around each function's parameters as a JSON schema of its own
        sep, key = JSON_OPTIONS["item_separator"], JSON_OPTIONS["key_separator"]
        rules = []
        for i, fn in enumerate(functions):
            head = (
                "{"
                + f'"name"{key}{json.dumps(fn["name"], ensure_ascii=False)}{sep}"arguments"{key}'
            )
            rules.append(f'fn{i}: {_lark_string(head)} args{i} "}}"\n')
            schema = _arguments_schema(fn, _OPTIONS)
            rules.append(f"args{i}: %json {json.dumps(schema, ensure_ascii=False)}\n")
        opening, closing = lit("<tool_call>\n"), lit("\n</tool_call>")
        grammar = (
            f"start: {calls}\n"
            f"call: {opening} body {closing}\n"
            f"body: {' | '.join(f'fn{i}' for i in range(len(functions)))}\n" + "".join(rules)
        )
        return Constraint.lark(grammar)
    xml = _XmlGrammar(fmt, lit)
    names = [xml.call(k, f) for k, f in enumerate(functions)]
    lines = [f"start: {calls}", f"call: {' | '.join(names)}", *xml.rules]
    return Constraint.lark("\n".join(lines) + "\n")


__all__ = ["CONSTRAINABLE_FORMATS", "tool_call_constraint"]
