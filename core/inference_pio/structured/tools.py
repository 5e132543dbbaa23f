"""``tool_choice`` "required" or a named function as a constraint: the reply must be the
model's tool-call markup with a call (or several) whose arguments match the tool's parameters.

Only the ``hermes`` format (``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
Qwen3 and Qwen3-VL) has a grammar here; Qwen3-Coder's XML-like calls and GLM's
``<arg_key>``/``<arg_value>`` pairs type each value by the schema in ways a grammar would have to
mirror, so those formats refuse forced tool calls (ValueError)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from inference_pio.structured.closed import close_objects
from inference_pio.structured.constraint import JSON_OPTIONS, Constraint

#: Formats whose markup :func:`tool_call_constraint` can force.
CONSTRAINABLE_FORMATS = ("hermes",)


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


def tool_call_constraint(
    fmt: str | None,
    tools: Sequence[Mapping[str, Any]],
    name: str | None = None,
    parallel: bool = True,
) -> Constraint:
    """The reply as tool calls only, in format ``fmt``: calls of any of ``tools`` ("required"),
    or of the function ``name`` alone (a named ``tool_choice``); one call, or (``parallel``) one
    or more. ValueError for a format without a grammar, no tools, or an unknown ``name``."""
    if fmt not in CONSTRAINABLE_FORMATS:
        raise ValueError(
            f"forcing a tool call needs constrained decoding of the model's tool-call markup, "
            f"available for the {', '.join(CONSTRAINABLE_FORMATS)} format only; this model's "
            f"format is {fmt!r}: use tool_choice 'auto'"
        )
    functions = [_function(t) for t in tools]
    if name is not None:
        functions = [f for f in functions if f["name"] == name]
        if not functions:
            raise ValueError(f"tool_choice names the function {name!r}, which is not in 'tools'")
    if not functions:
        raise ValueError("forcing a tool call needs at least one tool")
    options = {**JSON_OPTIONS, "lenient": True}  # tool schemas in the wild use any keyword
    # {"name": <the function>, "arguments": <its parameters>}, name first, written as the
    # markup's text around each function's parameters as a JSON schema of its own
    sep, key = JSON_OPTIONS["item_separator"], JSON_OPTIONS["key_separator"]
    rules = []
    for i, fn in enumerate(functions):
        head = "{" + f'"name"{key}{json.dumps(fn["name"], ensure_ascii=False)}{sep}"arguments"{key}'
        rules.append(f'fn{i}: {_lark_string(head)} args{i} "}}"\n')
        schema = _arguments_schema(fn, options)
        rules.append(f"args{i}: %json {json.dumps(schema, ensure_ascii=False)}\n")
    calls = 'call ("\\n" call)*' if parallel else "call"
    grammar = (
        f"start: {calls}\n"
        'call: "<tool_call>\\n" body "\\n</tool_call>"\n'
        f"body: {' | '.join(f'fn{i}' for i in range(len(functions)))}\n" + "".join(rules)
    )
    return Constraint.lark(grammar)


__all__ = ["CONSTRAINABLE_FORMATS", "tool_call_constraint"]
