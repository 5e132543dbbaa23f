"""close_objects: object schemas that name their properties allow no others unless they say so
(vLLM's default backend and OpenAI's strict schemas); what it must leave alone."""

from __future__ import annotations

from typing import Any

import pytest

from inference_pio.structured.closed import close_objects

OBJ = {"type": "object", "properties": {"a": {"type": "integer"}}}
CLOSED = {**OBJ, "additionalProperties": False}


def test_an_object_naming_properties_is_closed_and_the_input_is_not_changed() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert close_objects(schema) == CLOSED
    assert schema == OBJ  # a copy


@pytest.mark.parametrize(
    "says",
    [
        {"additionalProperties": True},
        {"additionalProperties": {"type": "string"}},
        {"patternProperties": {"^x_": {"type": "string"}}},
        {"unevaluatedProperties": False},
    ],
)
def test_a_schema_that_says_what_other_keys_may_appear_keeps_its_word(
    says: dict[str, Any],
) -> None:
    schema = {**OBJ, **says}
    assert close_objects(schema) == schema


def test_nested_schemas_are_closed_everywhere_a_subschema_can_be() -> None:
    schema = {
        "type": "object",
        "properties": {
            "inner": OBJ,
            "list": {"type": "array", "items": OBJ},
            "tuple": {"type": "array", "prefixItems": [OBJ, {"type": "string"}]},
            "either": {"anyOf": [OBJ, {"type": "null"}]},
            "one": {"oneOf": [OBJ]},
            "ref": {"$ref": "#/$defs/Item"},
        },
        "$defs": {"Item": OBJ},
        "definitions": {"Old": OBJ},
    }
    out = close_objects(schema)
    assert out["additionalProperties"] is False
    p = out["properties"]
    assert p["inner"] == CLOSED
    assert p["list"]["items"] == CLOSED
    assert p["tuple"]["prefixItems"] == [CLOSED, {"type": "string"}]
    assert p["either"]["anyOf"] == [CLOSED, {"type": "null"}]
    assert p["one"]["oneOf"] == [CLOSED]
    assert p["ref"] == {"$ref": "#/$defs/Item"}
    assert out["$defs"]["Item"] == CLOSED
    assert out["definitions"]["Old"] == CLOSED


def test_all_of_members_stay_open_but_what_they_hold_is_closed() -> None:
    """Closing each member of an allOf would refuse the other members' properties."""
    schema = {"allOf": [OBJ, {"type": "object", "properties": {"b": OBJ}}]}
    out = close_objects(schema)
    assert out["allOf"][0] == OBJ
    assert "additionalProperties" not in out["allOf"][1]
    assert out["allOf"][1]["properties"]["b"] == CLOSED


def test_property_names_and_values_are_not_mistaken_for_keywords() -> None:
    """A property called "properties" or "items" is a name, not a keyword; enum / const / default
    values are data."""
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "string"},
            "items": {"enum": [{"properties": {"x": 1}}]},
            "d": {"type": "object", "default": {"properties": {}}},
        },
    }
    out = close_objects(schema)
    assert out["properties"]["properties"] == {"type": "string"}
    assert out["properties"]["items"] == {"enum": [{"properties": {"x": 1}}]}
    assert out["properties"]["d"] == {"type": "object", "default": {"properties": {}}}
    assert out["additionalProperties"] is False


@pytest.mark.parametrize("schema", [True, False, {}, {"type": "object"}, {"type": "string"}])
def test_schemas_without_named_properties_are_unchanged(schema: Any) -> None:
    assert close_objects(schema) == schema


def test_boolean_schemas() -> None:
    """``true`` is any JSON value; ``false`` allows nothing: a clear error."""
    pytest.importorskip("llguidance")
    from inference_pio.structured import Constraint

    assert Constraint.json_schema(True).source == "{}"
    assert Constraint.json_schema("true").source == "{}"
    with pytest.raises(ValueError, match="allows no value"):
        Constraint.json_schema(False)
