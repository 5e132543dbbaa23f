"""Objects closed to properties a schema does not name, as vLLM's default structured-output
backend (xgrammar's strict mode) and OpenAI's strict schemas generate them.

JSON Schema allows any other property where ``additionalProperties`` is not given; a model
writing JSON under such a schema may go on inventing keys (and a random-weight one does, until
``max_tokens``). Users of vLLM and OpenAI expect the named properties only, so
:func:`close_objects` adds ``"additionalProperties": false`` to every object schema that names
``properties`` and says nothing about other keys itself. A schema that does say
(``additionalProperties``, ``patternProperties`` or ``unevaluatedProperties``) keeps its word,
and the members of an ``allOf`` are left open (closing each would refuse the others'
properties).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Keywords whose value is one subschema.
_ONE = (
    "additionalProperties",
    "items",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "unevaluatedItems",
    "propertyNames",
    "additionalItems",
)
#: Keywords whose value is a list of subschemas.
_LIST = ("anyOf", "oneOf", "prefixItems", "items")
#: Keywords whose value maps names to subschemas.
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
#: Keywords by which a schema states what other properties may appear.
_OPEN_SAYS = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def close_objects(schema: Any, close: bool = True) -> Any:
    """A copy of ``schema`` whose object schemas with ``properties`` refuse other keys, unless
    they say otherwise (see the module docstring); anything that is not a schema object (a
    boolean schema) comes back as it is."""
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _MAP and isinstance(value, Mapping):
            out[key] = {name: close_objects(sub) for name, sub in value.items()}
        elif key in _LIST and isinstance(value, list):
            out[key] = [close_objects(sub) for sub in value]
        elif key == "allOf" and isinstance(value, list):
            out[key] = [close_objects(sub, close=False) for sub in value]
        elif key in _ONE:
            out[key] = close_objects(value)
        else:
            out[key] = value
    says = any(key in schema for key in _OPEN_SAYS)
    if close and isinstance(schema.get("properties"), Mapping) and not says:
        out["additionalProperties"] = False
    return out


__all__ = ["close_objects"]
