"""Which JSON Schema constructs constrained decoding enforces, checked before any token is generated.

Every keyword has one treatment (docs/tools-and-structured-outputs.md has the table):

- enforced while decoding by the grammar backend (xgrammar), wherever the schema is placed;
- not enforced by the grammar (`UNSUPPORTED`, a `format` outside `ENFORCED_FORMATS`, a `multipleOf` that is
  not a whole number on an integer): a schema that must be enforced (strict) is refused with a 400 naming
  the keyword (R7.2); a non-strict `response_format` is decoded without it (`for_grammar`) and the answer is
  checked against the whole schema afterwards.

`for_grammar` is what every grammar is compiled from, wherever the schema is placed; it also bounds the
formats whose own grammar has no bound (`BOUNDED_FORMATS`).

Pure: no vLLM; the grammar compiler is called by `structured_output`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Keywords the grammar backend (xgrammar) does not enforce, with what to do instead. It ignores some
# (`not`, `uniqueItems`, `if`, ...) and gets others wrong (`allOf`, `contains`, `patternProperties`,
# `propertyNames` make it refuse valid answers), so none of them may reach it.
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
    "$dynamicRef": "dynamic references are not supported",
}
# The string formats the grammar enforces (OpenAI's strict mode supports the first nine).
ENFORCED_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
    | {"uri", "uri-reference", "json-pointer"}
)
# A format the grammar enforces through a pattern of ours, because its own grammar lets the value go on
# without end where nothing but the format's next part may follow: a small model then writes an email's local
# part (`1.11.1.1.11.101…`) until the token cap, and no closing quote can end it before an `@`. Ours allows
# at most 4 atoms joined by dots (`A-Z a-z 0-9` and ``!#$%&'*+/=?^_`{|}~-``) of at most 64 characters each:
# RFC 5321's 64 is the whole local part's limit, but a pattern cannot bound a sum of parts without spelling
# out every split, so this bound is looser (~260 characters) and refuses no address of up to 4 atoms. Then 1
# to 8 domain labels, whose length the closing pressure bounds (a quote may end the value after any of their
# characters). Quoted local parts (`"a b"@example.com`) are left out. It costs ~0.6 s to compile, once per
# schema.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
BOUNDED_FORMATS = {"email": rf"^{_ATOM}(\.{_ATOM}){{0,3}}@{_LABEL}(\.{_LABEL}){{0,7}}$"}

# Where subschemas live: a schema under these keys, a list of schemas, or a name -> schema mapping.
_SUBSCHEMA = ("items", "additionalProperties", "contains", "not", "if", "then", "else", "propertyNames")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


@dataclass(frozen=True)
class Unsupported:
    keyword: str
    where: str  # `properties.tags.items`, or `(root)`
    reason: str

    def explain(self) -> str:
        """The end of a sentence whose subject is the schema: `uses 'not' (at items), which ...`."""
        return f"uses '{self.keyword}' (at {self.where}), which constrained decoding cannot enforce: {self.reason}."


def _unsupported_here(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(keyword, reason) of what this schema object itself asks that the grammar does not enforce."""
    found = [(keyword, UNSUPPORTED[keyword]) for keyword in schema if keyword in UNSUPPORTED]
    if "format" in schema and schema["format"] not in ENFORCED_FORMATS:
        found.append(("format", f"'{schema['format']}' is not a format the grammar knows; use a pattern"))
    if "multipleOf" in schema and not (schema.get("type") == "integer" and isinstance(schema["multipleOf"], int)):
        found.append(("multipleOf", "only whole-number multiples of an integer are enforced"))
    return found


def _children(schema: dict[str, Any], path: str) -> list[tuple[Any, str]]:
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
    return children


def unsupported_keyword(schema: Any, path: str = "") -> Unsupported | None:
    """The first keyword the grammar would not enforce, or None when it enforces the whole schema."""
    if not isinstance(schema, dict):
        return None
    if found := _unsupported_here(schema):
        keyword, reason = found[0]
        return Unsupported(keyword, path or "(root)", reason)
    for child, where in _children(schema, path):
        if (unsupported := unsupported_keyword(child, where)) is not None:
            return unsupported
    return None


def _transformed(schema: Any, own: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """`schema` with `own` applied to every schema object in it (its own keywords), subschemas included."""
    if not isinstance(schema, dict):
        return schema
    node = own(schema)
    for key, value in node.items():
        if key in _SUBSCHEMA:
            node[key] = _transformed(value, own)
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            node[key] = [_transformed(child, own) for child in value]
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            node[key] = {name: _transformed(child, own) for name, child in value.items()}
    return node


def for_grammar(schema: Any) -> Any:
    """What the grammar enforces of `schema`: without the keywords it does not enforce (their subschemas go
    with them; a strict schema has none, it would have been refused), and a format of `BOUNDED_FORMATS` as its
    bounded pattern (unless the schema has a pattern of its own). The answer is checked against the whole
    schema afterwards."""

    def enforceable(node: dict[str, Any]) -> dict[str, Any]:
        dropped = {keyword for keyword, _ in _unsupported_here(node)}
        kept = {key: value for key, value in node.items() if key not in dropped}
        if (bounded := BOUNDED_FORMATS.get(kept.get("format"))) is not None and "pattern" not in kept:  # type: ignore[arg-type]
            del kept["format"]
            kept["pattern"] = bounded
        return kept

    return _transformed(schema, enforceable)


def relocated(schema: Any, pointer: str) -> Any:
    """`schema` as it must read once placed at `pointer` (`#/$defs/x`) inside a larger schema: its local
    references (`#`, `#/$defs/user`, `#/properties/a`) point into it there. Only `$ref`s where subschemas
    live are rewritten; `const`, `enum`, `default` and `examples` values are data and stay as they are."""

    def moved(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            return node | {"$ref": pointer + ref[1:]}
        return dict(node)

    return _transformed(schema, moved)
