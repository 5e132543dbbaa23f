"""What a constrained request's output must match, checked when it is made."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference_pio.errors import InferencePioError
from inference_pio.structured.closed import close_objects

#: How to install what structured outputs need.
EXTRA = "pip install 'inference-pio[structured]'"

#: The kinds of :class:`Constraint`.
KINDS = ("json_schema", "json_object", "regex", "lark")

#: JSON as :class:`Constraint` writes it by default: on one line with the separators of
#: ``json.dumps`` (``", "`` and ``": "``), the JSON models see in their chat templates. A schema's
#: own ``"x-guidance"`` options (llguidance's) override these, e.g.
#: ``{"whitespace_flexible": true}`` for any whitespace between tokens.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


class StructuredOutputsUnavailable(InferencePioError, ImportError, ValueError):
    """llguidance, which constrained decoding needs, is not installed (the ``structured``
    extra). A ValueError too: a request that asks for structured output cannot be served."""


def require_llguidance() -> Any:
    """The ``llguidance`` module; :class:`StructuredOutputsUnavailable` naming the extra when it
    is not installed."""
    try:
        import llguidance
    except ImportError:
        raise StructuredOutputsUnavailable(
            f"structured outputs (response_format, tool_choice 'required' or a named function, "
            f"constraint=...) need llguidance: {EXTRA}"
        ) from None
    return llguidance


@dataclass(frozen=True)
class Constraint:
    """A request's output must match this: ``kind`` is "json_schema" (``source``: the schema as
    JSON text), "json_object" (any JSON object), "regex" (``source``: the pattern, matched
    whole) or "lark" (``source``: a grammar in llguidance's Lark dialect). Made through the
    class methods; the grammar is compiled and checked at once (a bad schema, pattern or
    grammar raises ValueError with llguidance's message)."""

    kind: str
    source: str = ""
    #: llguidance's grammar (JSON text) of the constraint.
    grammar: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"constraint kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if not isinstance(self.source, str):
            raise TypeError(f"constraint source must be a str, got {type(self.source).__name__}")
        if self.kind in ("regex", "lark") and not self.source:
            raise ValueError(f"a {self.kind} constraint needs a non-empty {self.kind}")
        llg = require_llguidance()
        matcher = llg.LLMatcher
        try:
            if self.kind == "json_schema":
                grammar = matcher.grammar_from_json_schema(self.source, defaults=JSON_OPTIONS)
            elif self.kind == "json_object":
                grammar = matcher.grammar_from_json_schema(
                    '{"type": "object"}', defaults=JSON_OPTIONS
                )
            elif self.kind == "regex":
                grammar = matcher.grammar_from_regex(self.source)
            else:
                grammar = matcher.grammar_from_lark(self.source)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid {self.kind} constraint: {exc}") from None
        error = matcher.validate_grammar(grammar)
        if error and not error.startswith("WARNING"):
            raise ValueError(f"invalid {self.kind} constraint: {error.strip()}")
        object.__setattr__(self, "grammar", grammar)

    @classmethod
    def json_schema(
        cls, schema: Mapping[str, Any] | bool | str, closed_objects: bool = True
    ) -> Constraint:
        """JSON matching ``schema`` (a dict, a boolean schema, or its JSON text). With
        ``closed_objects`` (the default, as vLLM's default backend and OpenAI's strict schemas)
        an object schema naming ``properties`` allows no other key unless it says so itself
        (:func:`~inference_pio.structured.closed.close_objects`)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise ValueError(f"the JSON schema is not valid JSON: {exc}") from None
        if schema is True:  # any JSON value (the "x-guidance" defaults need an object schema)
            schema = {}
        elif schema is False:
            raise ValueError("the JSON schema false allows no value")
        if not isinstance(schema, (Mapping, bool)):
            raise ValueError(
                f"a JSON schema must be an object or a boolean, got {type(schema).__name__}"
            )
        if closed_objects and isinstance(schema, Mapping):
            schema = close_objects(schema)
        try:
            text = json.dumps(schema, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the JSON schema cannot be written as JSON: {exc}") from None
        return cls("json_schema", text)

    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object (OpenAI's ``response_format {"type": "json_object"}``)."""
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """Text matching ``pattern`` from start to end (Rust regex syntax)."""
        return cls("regex", pattern)

    @classmethod
    def lark(cls, grammar: str) -> Constraint:
        """Text of a context-free grammar in llguidance's Lark dialect (``start`` rule first;
        ``%json {...}`` embeds a JSON schema)."""
        return cls("lark", grammar)


__all__ = ["EXTRA", "JSON_OPTIONS", "KINDS", "Constraint", "StructuredOutputsUnavailable"]
