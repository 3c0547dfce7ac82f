"""The JSON Schema keyword table (issue #18): how each keyword is treated, with a schema using it, an
answer that satisfies it and one that breaks it. docs/tools-and-structured-outputs.md shows the same table;
tests/unit/test_schema_keywords.py checks every row in every place a schema can be enforced, and
tests/unit/test_docs.py that the docs list exactly these rows.

Treatments (schema_support.py):
- ENFORCED: the grammar allows only answers that satisfy it, wherever the schema is placed.
- NOT_ENFORCED: strict schemas (tools under `required`, a named function or `strict: true`; a strict
  `response_format`) are refused with a 400 naming the keyword; a non-strict `response_format` is decoded
  without it and the answer is checked against the whole schema afterwards.
- ANNOTATION: a `format` the grammar does not know is refused in strict schemas, and otherwise an
  annotation, as JSON Schema defines formats: neither enforced nor checked.
- ANY_OF_THEN_CHECKED: `oneOf` is decoded as `anyOf`; an answer matching several alternatives is caught
  by the check after generation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

ENFORCED: Final = "enforced while decoding"
NOT_ENFORCED: Final = "strict: 400 naming it; otherwise checked after"
ANNOTATION: Final = "strict: 400 naming it; otherwise an annotation"
ANY_OF_THEN_CHECKED: Final = "enforced as anyOf; exclusiveness checked after"
Treatment = Literal[
    "enforced while decoding",
    "strict: 400 naming it; otherwise checked after",
    "strict: 400 naming it; otherwise an annotation",
    "enforced as anyOf; exclusiveness checked after",
]


@dataclass(frozen=True)
class Keyword:
    name: str  # the docs table's first column
    treatment: Treatment
    property_schema: dict[str, Any]  # the schema of property `a` of an object that requires it
    valid: Any  # a value of `a` that satisfies it
    invalid: Any  # one that breaks it (none for an annotation)
    definitions: dict[str, Any] | None = None  # `$defs` of the root object

    @property
    def keyword(self) -> str:
        """The keyword an error names: `if` of "if, then, else", `format` of "format: uuid"."""
        return re.split(r"[ ,:]", self.name, maxsplit=1)[0]

    @property
    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "properties": {"a": self.property_schema}, "required": ["a"]}
        return schema | ({"$defs": self.definitions} if self.definitions else {})


NODE = {
    "type": "object",
    "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
    "required": ["v", "next"],
}

KEYWORDS: list[Keyword] = [
    Keyword("type", ENFORCED, {"type": "integer"}, 3, "3"),
    Keyword("type: [..., null] (nullable)", ENFORCED, {"type": ["string", "null"]}, None, 1),
    Keyword(
        "properties, required",
        ENFORCED,
        {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        {"b": True},
        {},
    ),
    Keyword(
        "additionalProperties: false",
        ENFORCED,
        {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"], "additionalProperties": False},
        {"b": 1},
        {"b": 1, "c": 2},
    ),
    Keyword(
        "additionalProperties: {schema}",
        ENFORCED,
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"x": 1},
        {"x": "one"},
    ),
    Keyword(
        "minProperties, maxProperties",
        ENFORCED,
        {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1, "maxProperties": 1},
        {"x": 1},
        {},
    ),
    Keyword("enum", ENFORCED, {"enum": ["red", "green"]}, "red", "blue"),
    Keyword("const", ENFORCED, {"const": "v1"}, "v1", "v2"),
    Keyword("anyOf", ENFORCED, {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, True, "yes"),
    Keyword(
        "$ref to $defs",
        ENFORCED,
        {"$ref": "#/$defs/user"},
        {"name": "Ada"},
        {"name": 1},
        {"user": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
    ),
    Keyword(
        "$ref nested in $defs",
        ENFORCED,
        {"$ref": "#/$defs/team"},
        {"lead": {"name": "Ada"}},
        {"lead": {"name": 1}},
        {
            "team": {"type": "object", "properties": {"lead": {"$ref": "#/$defs/user"}}, "required": ["lead"]},
            "user": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        },
    ),
    Keyword(
        "recursive $ref",
        ENFORCED,
        {"$ref": "#/$defs/node"},
        {"v": 1, "next": {"v": 2, "next": None}},
        {"v": 1, "next": {"v": "2", "next": None}},
        {"node": NODE},
    ),
    Keyword("items", ENFORCED, {"type": "array", "items": {"type": "integer"}}, [1, 2], [1, "2"]),
    Keyword(
        "prefixItems",
        ENFORCED,
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
        [1, "x"],
        ["x", 1],
    ),
    Keyword(
        "minItems, maxItems",
        ENFORCED,
        {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
        [1],
        [1, 2, 3],
    ),
    Keyword("minLength, maxLength", ENFORCED, {"type": "string", "minLength": 2, "maxLength": 3}, "abc", "abcd"),
    Keyword("pattern", ENFORCED, {"type": "string", "pattern": "^[a-z]+-[0-9]+$"}, "abc-12", "ABC-12"),
    Keyword(
        "format: date-time, date, time, duration",
        ENFORCED,
        {"type": "string", "format": "date-time"},
        "2026-12-01T10:00:00Z",
        "yesterday",
    ),
    # An email's grammar is ours (schema_support.BOUNDED_FORMATS): a local part without end is refused too.
    Keyword(
        "format: email", ENFORCED, {"type": "string", "format": "email"}, "ada.l@example.com", "a" * 65 + "@example.com"
    ),
    Keyword("format: hostname", ENFORCED, {"type": "string", "format": "hostname"}, "api.example.com", "api example"),
    Keyword("format: ipv4, ipv6", ENFORCED, {"type": "string", "format": "ipv4"}, "10.0.0.1", "10.0.0"),
    Keyword(
        "format: uuid", ENFORCED, {"type": "string", "format": "uuid"}, "123e4567-e89b-12d3-a456-426614174000", "123"
    ),
    Keyword(
        "format: uri, uri-reference, json-pointer",
        ENFORCED,
        {"type": "string", "format": "uri"},
        "https://example.com/a",
        "not a uri",
    ),
    Keyword("minimum, maximum", ENFORCED, {"type": "integer", "minimum": 1, "maximum": 5}, 5, 6),
    Keyword(
        "exclusiveMinimum, exclusiveMaximum",
        ENFORCED,
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        0.5,
        1,
    ),
    Keyword("multipleOf (whole number, on integers)", ENFORCED, {"type": "integer", "multipleOf": 3}, 9, 10),
    Keyword("oneOf", ANY_OF_THEN_CHECKED, {"oneOf": [{"type": "integer"}, {"type": "number"}]}, 1.5, 1),
    Keyword("multipleOf (otherwise)", NOT_ENFORCED, {"type": "number", "multipleOf": 0.5}, 1.5, 1.2),
    Keyword("format: any other", ANNOTATION, {"type": "string", "format": "color"}, "red", None),
    Keyword(
        "uniqueItems",
        NOT_ENFORCED,
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
        [1, 2],
        [1, 1],
    ),
    Keyword("not", NOT_ENFORCED, {"type": "integer", "not": {"const": 0}}, 1, 0),
    Keyword(
        "if, then, else", NOT_ENFORCED, {"type": "integer", "if": {"minimum": 10}, "then": {"multipleOf": 10}}, 20, 15
    ),
    Keyword("allOf", NOT_ENFORCED, {"allOf": [{"type": "integer"}, {"minimum": 3}]}, 4, 2),
    Keyword(
        "contains, minContains, maxContains", NOT_ENFORCED, {"type": "array", "contains": {"const": 1}}, [0, 1], [0]
    ),
    Keyword(
        "patternProperties",
        NOT_ENFORCED,
        {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
        {"x1": 1},
        {"x1": "one"},
    ),
    Keyword(
        "propertyNames", NOT_ENFORCED, {"type": "object", "propertyNames": {"pattern": "^x"}}, {"x1": 1}, {"y1": 1}
    ),
    Keyword(
        "dependentRequired, dependentSchemas, dependencies",
        NOT_ENFORCED,
        {
            "type": "object",
            "properties": {"b": {"type": "integer"}, "c": {"type": "integer"}},
            "dependentRequired": {"b": ["c"]},
        },
        {"b": 1, "c": 2},
        {"b": 1},
    ),
    Keyword("$dynamicRef", NOT_ENFORCED, {"$dynamicRef": "#/$defs/n"}, 1, "one", {"n": {"type": "integer"}}),
    Keyword(
        "unevaluatedProperties, unevaluatedItems",
        NOT_ENFORCED,
        {"type": "object", "properties": {"b": {"type": "integer"}}, "unevaluatedProperties": False},
        {"b": 1},
        {"b": 1, "c": 2},
    ),
]
