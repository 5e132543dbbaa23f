"""Tool calls in model output: one parser per format, whole-text and streaming.

Formats (the names vLLM gives its ``--tool-call-parser``):

- ``hermes``: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (Qwen3,
  Qwen3-4B-Instruct-2507, Qwen3-VL).
- ``qwen3_coder``: ``<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n
  </function>\\n</tool_call>``; values are converted by the tool's JSON-schema type (Qwen3-Coder).
- ``glm47``: ``<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>``;
  values are JSON-decoded where they parse, unless the schema says string (GLM-4.7).

A reply is text with ``<tool_call>...</tool_call>`` blocks. Each closed block that parses is a
call; a block that does not parse, or one never closed, stays text. ``content`` is the text
outside the calls; once a reply has calls, whitespace-only stretches of text (between calls,
say) are dropped and an empty content is None. :func:`parse_tool_calls` reads a whole reply;
:class:`inference_pio.toolstream.ToolCallStream` reads it in pieces, the arguments of each call
streamed as they grow, and gives the same content and calls.

A call's ``arguments`` is JSON object text: for ``hermes`` the ``arguments`` object as the model
wrote it (when the call is written ``{"name": ..., "arguments": {...}}``, in that order; else
re-serialized), for the XML formats ``json.dumps`` of the converted parameters in the order
written. In the XML formats (and the call's own ``name``) a key written twice counts once, with
its first value (what a stream has already sent); hermes ``arguments`` stay the text the model
wrote, so a key written twice inside them reads as JSON parsers read it (the last value).
"""

from __future__ import annotations

import ast
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

START = "<tool_call>"
END = "</tool_call>"

#: The markup strings of each format's calls: what a tokenizer may hold as (special) added
#: tokens, which a reply's decoding must keep and a forced call's grammar must write as tokens.
MARKUP: dict[str, tuple[str, ...]] = {
    "hermes": (START, END),
    "qwen3_coder": (START, END, "<function=", "</function>", "<parameter=", "</parameter>"),
    "glm47": (START, END, "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"),
}

#: A tool as OpenAI's API gives it: ``{"type": "function", "function": {"name", "parameters"}}``.
Tool = Mapping[str, Any]


def new_call_id() -> str:
    """A tool-call id as OpenAI makes them: ``call_`` and 24 random hex digits."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolCall:
    """One call: the function's name and its arguments as a JSON object text."""

    name: str
    arguments: str
    id: str = field(default_factory=new_call_id, compare=False)

    def to_openai(self) -> dict[str, Any]:
        """The call as OpenAI's ``message.tool_calls`` item."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ParsedReply:
    """A reply split into its text ``content`` (None when empty) and its ``tool_calls``."""

    content: str | None
    tool_calls: list[ToolCall]


# ---- helpers ------------------------------------------------------------------------------------


def _local_ref(schema: Any, root: Mapping[str, Any]) -> Any:
    """``schema`` with a local ``$ref`` (``#/$defs/X``, ``#/definitions/X``) into ``root``
    inlined, one level (its other keywords kept); else ``schema`` as it is."""
    ref = schema.get("$ref") if isinstance(schema, Mapping) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    target: Any = root
    for part in ref[2:].split("/"):
        target = target.get(part) if isinstance(target, Mapping) else None
    if not isinstance(target, Mapping):
        return schema
    return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}


def resolve_property(schema: Any, root: Mapping[str, Any]) -> Any:
    """A property schema typed as its ``$ref`` says (pydantic writes nested models and
    ``Optional`` ones as ``{"$ref": ...}`` and ``{"anyOf": [{"$ref": ...}, {"type": "null"}]}``)."""
    schema = _local_ref(schema, root)
    every = schema.get("allOf") if isinstance(schema, Mapping) else None
    if isinstance(every, list) and len(every) == 1 and "type" not in schema:
        # pydantic v1's nested model: {"allOf": [{"$ref": ...}], "description": ...}
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        schema = {**_local_ref(every[0], root), **rest}
    if isinstance(schema, Mapping) and isinstance(schema.get("anyOf"), list):
        return {**schema, "anyOf": [_local_ref(o, root) for o in schema["anyOf"]]}
    return schema


def _properties(tools: Sequence[Tool] | None, name: str) -> dict[str, Any]:
    """The JSON-schema ``properties`` of the tool called ``name`` ({} when unknown), local
    ``$ref``s of each resolved (:func:`resolve_property`)."""
    for tool in tools or ():
        fn = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and fn.get("name") == name:
            params = fn.get("parameters")
            props = params.get("properties") if isinstance(params, Mapping) else None
            if not isinstance(props, Mapping):
                return {}
            return {k: resolve_property(v, params) for k, v in props.items()}  # type: ignore[arg-type]
    return {}


def _schema_type(schema: Any) -> tuple[str, bool]:
    """The primary type of a property schema (lower-case; "string" when unsaid) and whether it
    admits null (``"type": [..., "null"]`` or an ``anyOf`` with a null option)."""
    if not isinstance(schema, Mapping):
        return "string", False
    declared = schema.get("type")
    options = schema.get("anyOf", schema.get("oneOf"))  # oneOf: the same types
    if declared is None and isinstance(options, list):
        declared = [o.get("type") for o in options if isinstance(o, Mapping)]
    if isinstance(declared, list):
        names = [str(t).strip().lower() for t in declared if t is not None]
        rest = [t for t in names if t != "null"]
        return (rest[0] if rest else "null"), "null" in names
    if declared is None:
        return "string", False
    kind = str(declared).strip().lower()
    return kind, kind == "null"


def _is_json(value: Any) -> bool:
    """True when ``value`` is made of JSON types only (finite numbers, string keys)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _loads(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``text`` is one JSON value (finite numbers); else ``(False,
    None)``."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False, None
    return (True, value) if _is_json(value) else (False, None)


def _literal(text: str) -> tuple[bool, Any]:
    """``text`` as a Python literal made of JSON types (``{'a': 1}``, ``True``)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None
    return (True, value) if _is_json(value) else (False, None)


_STRING_TYPES = ("string", "str", "text", "varchar", "char", "enum")


def _declared_types(schema: Any) -> list[str]:
    """The non-null types a property schema declares (``type`` or its ``anyOf`` options')."""
    if not isinstance(schema, Mapping):
        return []
    declared = schema.get("type")
    options = schema.get("anyOf", schema.get("oneOf"))  # oneOf: the same types
    if declared is None and isinstance(options, list):
        declared = [o.get("type") for o in options if isinstance(o, Mapping)]
    if not isinstance(declared, list):
        declared = [declared]
    names = [str(t).strip().lower() for t in declared if t is not None]
    return [t for t in dict.fromkeys(names) if t != "null"]


def _json_is(value: Any, kind: str) -> bool:
    """Whether a decoded JSON ``value`` is of JSON-schema type ``kind``."""
    if kind in _STRING_TYPES:
        return isinstance(value, str)
    if kind in ("boolean", "bool", "binary"):
        return isinstance(value, bool)
    if kind.startswith(("int", "uint", "long", "short", "unsigned")):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind.startswith(("num", "float", "double")):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("object", "dict"):
        return isinstance(value, dict)
    if kind in ("array", "list"):
        return isinstance(value, list)
    return False


_INT_PREFIXES = ("int", "uint", "long", "short", "unsigned")


def convert_value(value: str, schema: Any) -> Any:
    """A Qwen3-Coder parameter's text converted by its property ``schema``, as vLLM's
    ``qwen3_coder`` parser does: strings stay as written; integers and numbers parse (an
    integral number becomes an int); booleans are ``true``/``false``; objects and arrays are
    JSON (or a Python literal); ``null`` is None for non-string or nullable types. A value that
    does not convert stays a string (a boolean that is neither word is false)."""
    if schema is None:  # a parameter the tool does not declare
        return value
    kind, nullable = _schema_type(schema)
    if value.lower() in ("null", "none") and (nullable or kind not in _STRING_TYPES):
        return None
    if kind in _STRING_TYPES:
        return value
    kinds = _declared_types(schema)
    if len(kinds) > 1:
        # a union (["integer", "string"], anyOf ...): a forced call writes these values as JSON
        # (a string in quotes); a JSON value of one of the types is that value
        ok, parsed = _loads(value.strip())
        if ok and any(_json_is(parsed, k) for k in kinds):
            return parsed
        if (
            kind in ("boolean", "bool", "binary")
            and any(k in _STRING_TYPES for k in kinds)
            and value.strip().lower() not in ("true", "false")
        ):
            return value  # not a boolean: the string it may be
    if kind.startswith(_INT_PREFIXES):
        try:
            return int(value.strip())
        except ValueError:
            return value
    if kind.startswith(("num", "float", "double")):
        try:
            number = float(value.strip())
        except ValueError:
            return value
        if not math.isfinite(number):
            return value
        return int(number) if number.is_integer() else number
    if kind in ("boolean", "bool", "binary"):
        return value.strip().lower() == "true"
    ok, parsed = _loads(value)
    if not ok:
        ok, parsed = _literal(value)
    return parsed if ok else value


def _valid_name(name: str) -> bool:
    """A function name: non-empty, without whitespace, quotes, braces or angle brackets."""
    return bool(name) and not any(c in "{}<>\"' \t\r\n" for c in name)


def _dumps(arguments: Mapping[str, Any]) -> str:
    return json.dumps(dict(arguments), ensure_ascii=False)


# ---- one block per format -----------------------------------------------------------------------


def _top_level(text: str) -> dict[str, Any] | None:
    """``text`` as one JSON object (finite numbers) whose keys keep their first value (a key
    written twice counts once); None when it is not one."""
    objects: list[list[tuple[str, Any]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)
        return dict(pairs)

    try:
        value = json.loads(text, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not _is_json(value):
        return None
    first: dict[str, Any] = {}
    for key, item in objects[-1]:  # the outermost object is built last
        first.setdefault(key, item)
    return first


_JSON_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.)*"')
_JSON_STRING_OPEN = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.)*\\?')
#: What a hermes call starts with, in order (None: the name, a JSON string), any whitespace
#: between: ``{"name": "NAME", "arguments": {``.
_HERMES_HEAD: tuple[str | None, ...] = ("{", '"name"', ":", None, ",", '"arguments"', ":", "{")


def hermes_head(body: str) -> tuple[str, int] | bool:
    """How a hermes call body starts: ``(name, where its arguments' "{" is)`` once ``body``
    starts ``{"name": "NAME", "arguments": {``; True while it may still (``body`` is a prefix
    of such a start); False once it cannot."""
    pos, name = 0, ""
    for want in _HERMES_HEAD:
        pos = _skip_space(body, pos)
        if pos == len(body):
            return True
        if want is None:
            found = _JSON_STRING.match(body, pos)
            if found is None:
                return _JSON_STRING_OPEN.fullmatch(body, pos) is not None
            ok, name = _loads(found.group())
            if not ok or not isinstance(name, str) or not name:
                return False
            pos = found.end()
            continue
        piece = body[pos : pos + len(want)]
        if piece != want:
            return len(piece) < len(want) and want.startswith(piece)
        pos += len(want)
    return name, pos - 1


_JSON_SYNTAX = re.compile(r'[{}\[\]"]')
_JSON_IN_STRING = re.compile(r'["\\]')


class JsonValueEnd:
    """Finds where a JSON object or array that starts at ``start`` ends, reading text as it
    grows (:meth:`scan` again with a longer text resumes where it stopped)."""

    def __init__(self, start: int) -> None:
        self.start = start
        self._pos = start  # scanned up to here
        self._depth = 0
        self._in_string = False
        self._escape = False
        #: the index just past the value once found, else -1
        self.end = -1

    def scan(self, text: str) -> int:
        """The end of the value in ``text`` (a longer version of the last text), or -1."""
        pos = self._pos
        while self.end == -1 and pos < len(text):
            if self._escape:
                self._escape, pos = False, pos + 1
                continue
            if self._in_string:
                found = _JSON_IN_STRING.search(text, pos)
                if found is None:
                    pos = len(text)
                    break
                pos = found.end()
                if found.group() == "\\":
                    self._escape = True
                else:
                    self._in_string = False
                continue
            found = _JSON_SYNTAX.search(text, pos)
            if found is None:
                pos = len(text)
                break
            pos, char = found.end(), found.group()
            if char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth <= 0:
                    self.end = pos
        self._pos = pos
        return self.end


def _hermes_arguments(body: str, name: str) -> str | None:
    """The arguments object text as written, for a body that starts
    ``{"name": NAME, "arguments": {``; else None."""
    head = hermes_head(body)
    if not isinstance(head, tuple) or head[0] != name:
        return None
    end = JsonValueEnd(head[1]).scan(body)
    return body[head[1] : end] if end != -1 else None


def parse_hermes(body: str, tools: Sequence[Tool] | None = None) -> ToolCall | None:
    """``{"name": ..., "arguments": {...}}`` (``arguments`` may be absent, or JSON text). The
    call's arguments are the object's text as written when ``name`` comes first and
    ``arguments`` second (what a stream sends as it grows), else the object re-serialized."""
    obj = _top_level(body.strip())
    if obj is None:
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # the arguments as JSON text, as OpenAI sends them
        ok, args = _loads(args)
        if not ok:
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    if "arguments" in obj:
        raw = _hermes_arguments(body, name)
        if raw is not None:
            return ToolCall(name, raw)
    return ToolCall(name, _dumps(args))


_FUNCTION = "<function="
_FUNCTION_END = "</function>"
_PARAMETER = "<parameter="
_PARAMETER_END = "</parameter>"


def _skip_space(text: str, pos: int) -> int:
    """The first index at or after ``pos`` that is not whitespace (``len(text)`` if none)."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def parameter_end(text: str, start: int) -> int:
    """Where the ``</parameter>`` closing a value that starts at ``start`` is: the first one
    followed (after whitespace) by another parameter, ``</function>`` or the end, so that a value
    may hold the tag itself (code, say). -1 when there is none."""
    at = text.find(_PARAMETER_END, start)
    while at != -1:
        after = text[at + len(_PARAMETER_END) :].lstrip()
        if not after or after.startswith((_PARAMETER, _FUNCTION_END)):
            return at
        at = text.find(_PARAMETER_END, at + 1)
    return -1


def parse_qwen3_coder(body: str, tools: Sequence[Tool] | None = None) -> ToolCall | None:
    """``<function=NAME>`` then ``<parameter=ARG>\\nVALUE\\n</parameter>`` blocks then
    ``</function>``; values converted by the tool's schema (:func:`convert_value`)."""
    text = body.strip()
    if not text.startswith(_FUNCTION) or not text.endswith(_FUNCTION_END):
        return None
    close = text.find(">", len(_FUNCTION))
    if close == -1:
        return None
    name = text[len(_FUNCTION) : close]
    if not _valid_name(name):
        return None
    props = _properties(tools, name)
    inner = text[close + 1 : len(text) - len(_FUNCTION_END)]
    args: dict[str, Any] = {}
    pos = 0
    while (pos := _skip_space(inner, pos)) < len(inner):
        if not inner.startswith(_PARAMETER, pos):
            return None  # stray text between the parameters
        name_end = inner.find(">", pos + len(_PARAMETER))
        if name_end == -1:
            return None
        key = inner[pos + len(_PARAMETER) : name_end].strip()
        if not key:
            return None
        end, step = parameter_end(inner, name_end + 1), len(_PARAMETER_END)
        following = inner.find(_PARAMETER, name_end + 1)
        if end == -1 or -1 < following < end:
            # no </parameter> (Qwen3-Coder drops it at times): the value runs to the next
            # parameter or to </function>, as vLLM's qwen3_coder parser reads it
            end, step = (len(inner) if following == -1 else following), 0
        value = inner[name_end + 1 : end]
        if value.startswith("\n"):
            value = value[1:]
        if value.endswith("\n"):
            value = value[:-1]
        args.setdefault(key, convert_value(value, props.get(key)))
        pos = end + step
    return ToolCall(name, _dumps(args))


_ARG_KEY, _ARG_KEY_END = "<arg_key>", "</arg_key>"
_ARG_VALUE, _ARG_VALUE_END = "<arg_value>", "</arg_value>"


def parse_glm47(body: str, tools: Sequence[Tool] | None = None) -> ToolCall | None:
    """``NAME`` then ``<arg_key>K</arg_key><arg_value>V</arg_value>`` pairs. A value is
    JSON-decoded where it parses (a Python literal too), unless the tool's schema types it as
    a string; otherwise it stays the string written."""
    first = body.find(_ARG_KEY)
    name = (body if first == -1 else body[:first]).strip()
    if not _valid_name(name):
        return None
    props = _properties(tools, name)
    args: dict[str, Any] = {}
    pos = len(body) if first == -1 else first
    while (pos := _skip_space(body, pos)) < len(body):
        if not body.startswith(_ARG_KEY, pos):
            return None
        key_end = body.find(_ARG_KEY_END, pos)
        if key_end == -1:
            return None
        key = body[pos + len(_ARG_KEY) : key_end].strip()
        pos = _skip_space(body, key_end + len(_ARG_KEY_END))
        if not key or not body.startswith(_ARG_VALUE, pos):
            return None
        value_end = body.find(_ARG_VALUE_END, pos)
        if value_end == -1:
            return None
        value = body[pos + len(_ARG_VALUE) : value_end]
        pos = value_end + len(_ARG_VALUE_END)
        args.setdefault(key, glm_value(value, props, key))
    return ToolCall(name, _dumps(args))


def glm_value(value: str, props: Mapping[str, Any], key: str) -> Any:
    """A GLM ``<arg_value>``: the string written when the tool's schema types ``key`` as a
    string, else its JSON (or Python literal) value where it parses, else the string."""
    kind, _ = _schema_type(props.get(key)) if key in props else ("", False)
    if kind in _STRING_TYPES:
        return value
    ok, parsed = _loads(value.strip())
    if not ok:
        ok, parsed = _literal(value.strip())
    return parsed if ok else value


BlockParser = Callable[[str, Sequence[Tool] | None], ToolCall | None]

#: The known formats and their block parsers (the text between ``<tool_call>`` and its end).
PARSERS: dict[str, BlockParser] = {
    "hermes": parse_hermes,
    "qwen3_coder": parse_qwen3_coder,
    "glm47": parse_glm47,
}


#: Formats whose call is whole without its ``</tool_call>`` (a ``</function>``, a JSON object):
#: at the end of a reply, such a call counts (the model stopped before the closing tag), as
#: vLLM's ``hermes`` and ``qwen3_coder`` parsers read it.
UNCLOSED = ("hermes", "qwen3_coder")


def check_format(name: str | None) -> str | None:
    """``name`` when it is None or a known format; raises ValueError otherwise."""
    if name is not None and name not in PARSERS:
        raise ValueError(
            f"unknown tool-call format {name!r}; known formats: {', '.join(sorted(PARSERS))}"
        )
    return name


def _parser(fmt: str) -> BlockParser:
    check_format(fmt)
    return PARSERS[fmt]


def _content(segments: list[str], called: bool) -> str | None:
    if not called:
        return "".join(segments)
    text = "".join(s for s in segments if s.strip())
    return text or None


def parse_tool_calls(text: str, fmt: str, tools: Sequence[Tool] | None = None) -> ParsedReply:
    """Splits a whole reply into content and tool calls in format ``fmt`` (see the module
    docstring). Never raises on model output: what does not parse stays content."""
    parse = _parser(fmt)
    segments: list[str] = []
    calls: list[ToolCall] = []
    segment_start = pos = 0
    while (start := text.find(START, pos)) != -1:
        end = text.find(END, start + len(START))
        if end == -1:  # never closed: text, unless the reply ended after a whole call
            call = parse(text[start + len(START) :], tools) if fmt in UNCLOSED else None
            if call is not None:
                segments.append(text[segment_start:start])
                calls.append(call)
                segment_start = len(text)
            break
        call = parse(text[start + len(START) : end], tools)
        pos = end + len(END)
        if call is not None:
            segments.append(text[segment_start:start])
            calls.append(call)
            segment_start = pos
    segments.append(text[segment_start:])
    return ParsedReply(_content(segments, bool(calls)), calls)


def markup_tokens(tokenizer: Any, fmt: str | None) -> dict[str, int]:
    """The markup strings of format ``fmt`` (:data:`MARKUP`) that ``tokenizer`` holds as
    special tokens, with their ids ({} for none, no format, or a tokenizer that does not say):
    GLM-4.7's ``<tool_call>``, ``<arg_key>``, ... may be. A reply's decoding must keep them
    (skipping special tokens would drop the calls' markup) and a forced call's grammar must
    write them as those tokens (text never matches a special token)."""
    to_id = getattr(tokenizer, "token_to_id", None)
    special = getattr(tokenizer, "special_ids", None)
    if fmt is None or to_id is None or special is None:
        return {}
    found = {text: to_id(text) for text in MARKUP[check_format(fmt) or fmt]}
    return {text: int(i) for text, i in found.items() if i is not None and i in special}


def format_of_template(template: str | None) -> str | None:
    """The tool-call format a chat template teaches the model, from the markup it shows: Qwen3-
    Coder's ``<function=...>`` / ``<parameter=...>`` XML, GLM's ``<arg_key>`` pairs, else the hermes
    JSON of a template that mentions ``<tool_call>``; None for a template without tool calls."""
    if not template:
        return None
    if "<function=" in template and "<parameter=" in template:
        return "qwen3_coder"
    if "<arg_key>" in template:
        return "glm47"
    if "<tool_call>" in template:
        return "hermes"
    return None


def format_for(model: Any) -> str | None:
    """The tool-call format of a loaded model: its ``tool_call_format`` attribute; else the one
    its checkpoint's chat template teaches (:func:`format_of_template`: a Qwen3-30B-A3B-Instruct
    checkpoint loaded by the Coder plugin writes hermes calls); else the ``tool_call_format`` of
    the registered :class:`~inference_pio.ModelSpec` of its name."""
    fmt = getattr(model, "tool_call_format", None)
    if fmt is not None:
        return check_format(fmt)
    template = getattr(getattr(model, "tokenizer", None), "chat_template", None)
    fmt = format_of_template(template if isinstance(template, str) else None)
    if fmt is not None:
        return fmt
    name = getattr(model, "name", None)
    if not isinstance(name, str) or not name:
        return None
    from inference_pio.plugins import get_plugin_host

    registry = get_plugin_host().registry
    return registry.get(name).tool_call_format if name in registry else None
