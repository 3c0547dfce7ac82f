"""Which JSON Schema constructs constrained decoding can enforce, checked before any token is generated.

A schema the grammar compiler cannot honour must be refused with a 400 naming the keyword (R7.2), not
accepted and then quietly left unenforced.
"""

from __future__ import annotations

from typing import Any

# Keywords the grammar backend (xgrammar) cannot enforce, with what to do instead.
UNSUPPORTED: dict[str, str] = {
    "not": "negation cannot be compiled to a grammar",
    "if": "conditional schemas are not supported",
    "then": "conditional schemas are not supported",
    "else": "conditional schemas are not supported",
    "allOf": "merge the subschemas into one object schema",
    "dependentSchemas": "dependencies between properties are not supported",
    "dependentRequired": "dependencies between properties are not supported",
    "dependencies": "dependencies between properties are not supported",
    "patternProperties": "list the properties explicitly",
    "propertyNames": "list the properties explicitly",
    "unevaluatedProperties": "use additionalProperties",
    "unevaluatedItems": "use items",
    "contains": "array membership constraints are not supported",
    "minContains": "array membership constraints are not supported",
    "maxContains": "array membership constraints are not supported",
    "uniqueItems": "uniqueness cannot be enforced while decoding",
    "multipleOf": "numeric divisibility cannot be enforced while decoding",
    "$dynamicRef": "dynamic references are not supported",
}

# Where subschemas live: a schema under these keys, a list of schemas, or a name -> schema mapping.
_SUBSCHEMA = ("items", "additionalProperties", "contains", "not", "if", "then", "else", "propertyNames")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


def unsupported_keyword(schema: Any, path: str = "") -> tuple[str, str] | None:
    """The first (keyword, where) that cannot be enforced, or None when the whole schema can be."""
    if not isinstance(schema, dict):
        return None
    for keyword in schema:
        if keyword in UNSUPPORTED:
            return keyword, path or "(root)"
    children: list[tuple[Any, str]] = []
    for key in _SUBSCHEMA:
        if key in schema:
            children.append((schema[key], f"{path}.{key}".lstrip(".")))
    # The schema has not been checked as JSON Schema yet: a list where a mapping belongs is skipped here
    # and refused by that check.
    for key in _SUBSCHEMA_LISTS:
        if isinstance(items := schema.get(key), list):
            children += [(child, f"{path}.{key}[{i}]".lstrip(".")) for i, child in enumerate(items)]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(mapping := schema.get(key), dict):
            children += [(child, f"{path}.{key}.{name}".lstrip(".")) for name, child in mapping.items()]
    for child, where in children:
        if (found := unsupported_keyword(child, where)) is not None:
            return found
    return None


def explain(keyword: str, where: str) -> str:
    """The end of a sentence whose subject is the schema: `uses 'not' (at items), which ...`."""
    return f"uses '{keyword}' (at {where}), which constrained decoding cannot enforce: {UNSUPPORTED[keyword]}."
