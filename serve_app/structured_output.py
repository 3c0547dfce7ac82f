"""Structured outputs (R7.1-R7.3): schemas checked and compiled once each before generation, answers
post-checked after it. Everything a request asks to enforce goes through here: `response_format`, and
the tool schemas that forced or strict tool calls must follow.

Before generation a `response_format` is validated: its shape, the schema as JSON Schema, strict mode's
limits (a keyword the grammar cannot enforce is a 400 naming it), and compilation by the grammar backend
the engine uses (xgrammar), so a schema the engine would choke on is refused before any token. The
result is a plain `ResponseConstraint` handed to the engine. After generation each finished answer is
parsed and validated against the schema; a violation is reported as an error, never as success.

Compilation and validators are cached per schema (keyed by its canonical JSON, hash shown in logs):
agents send the same schema on every turn.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError, invalid_request, server_error
from serve_app.protocol.tools import (
    ANY_OBJECT,
    FunctionDefinition,
    ResponseFormat,
    ResponseFormatJsonObject,
    ResponseFormatText,
)
from serve_app.routing import needs_tool_parsing
from serve_app.schema_support import for_grammar, unsupported_keyword
from serve_app.tool_constraints import enforced_schemas

VIOLATION_CODE = "response_format_violation"
ARGUMENTS_VIOLATION_CODE = "tool_arguments_violation"
QUOTED_OUTPUT_CHARS = 500  # how much of an invalid answer the error quotes back
SCHEMA_PARAM = "response_format.json_schema.schema"


@dataclass(frozen=True)
class ResponseConstraint:
    """What the engine must produce (plain data, crosses Ray). `json_object` is enforced as any object."""

    kind: Literal["json_object", "json_schema"]
    schema_json: str  # compact JSON, keys in their order: the cache key
    # What the grammar enforces while decoding, when it differs from the schema (schema_support.for_grammar:
    # without the keywords a non-strict schema has that the grammar does not enforce, with bounded formats);
    # the answer is checked against the whole schema.
    grammar_json: str | None = None

    @property
    def schema(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.schema_json))

    @property
    def grammar_schema(self) -> dict[str, Any]:
        """The schema the engine's grammar enforces."""
        return cast(dict[str, Any], json.loads(self.grammar_json or self.schema_json))

    @property
    def schema_hash(self) -> str:
        return hashlib.sha256(self.schema_json.encode()).hexdigest()[:16]

    def violation(self, text: str) -> str | None:
        """Why `text` does not satisfy the constraint, or None when it does."""
        return schema_violation(self.schema_json, text)

    def violation_error(self, reason: str, text: str) -> OpenAIError:
        quoted = text if len(text) <= QUOTED_OUTPUT_CHARS else text[:QUOTED_OUTPUT_CHARS] + "..."
        return server_error(
            f"The model's answer does not satisfy response_format ({self.kind}): {reason}. Output: {quoted!r}",
            code=VIOLATION_CODE,
        )


def schema_violation(schema_json: str, text: str) -> str | None:
    """Why `text` is not JSON valid against the schema, or None when it is."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"the output is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    error = next(iter(_validator(schema_json).iter_errors(value)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"the output does not match the schema at {where}: {error.message[:300]}"


def arguments_violation(function: FunctionDefinition, arguments: str) -> OpenAIError | None:
    """R7.3, checked after: a call whose arguments break its function's enforced `parameters` (a keyword the
    grammar does not enforce, such as the exclusiveness of `oneOf`) is an error, never a call to run."""
    reason = schema_violation(_canonical(function.schema_or_any), arguments)
    if reason is None:
        return None
    quoted = arguments if len(arguments) <= QUOTED_OUTPUT_CHARS else arguments[:QUOTED_OUTPUT_CHARS] + "..."
    return server_error(
        f"The model's call to {function.name!r} does not satisfy its parameters: {reason}. Arguments: {quoted!r}",
        code=ARGUMENTS_VIOLATION_CODE,
    )


def check_constraints(request: ChatCompletionRequest) -> ResponseConstraint | None | OpenAIError:
    """Everything a chat request asks to enforce, checked before any token is generated (R7.2, R7.3): the
    tool schemas its calls must follow, then its `response_format`, returned as the engine's constraint."""
    if needs_tool_parsing(request):
        for param, name, schema in enforced_schemas(request):
            if (problem := _schema_problem(_canonical(schema), strict=True)) is not None:
                return invalid_request(f"{param} ({name}) {problem}", param=param)
    return response_constraint(request.response_format)


def response_constraint(response_format: ResponseFormat | None) -> ResponseConstraint | None | OpenAIError:
    """The constraint for a request's `response_format` (its shape was validated with the request): None
    for text; a 400 naming what is wrong with its schema."""
    if response_format is None or isinstance(response_format, ResponseFormatText):
        return None
    if isinstance(response_format, ResponseFormatJsonObject):
        return ResponseConstraint("json_object", _canonical(ANY_OBJECT))
    spec = response_format.json_schema
    schema_json = _canonical(spec.schema_)
    # Strict mode guarantees the schema or refuses it; non-strict enforces what it can and post-checks.
    if (problem := _schema_problem(schema_json, strict=bool(spec.strict))) is not None:
        return invalid_request(f"{SCHEMA_PARAM} {problem}", param=SCHEMA_PARAM)
    grammar_json = _canonical(for_grammar(spec.schema_))
    return ResponseConstraint("json_schema", schema_json, None if grammar_json == schema_json else grammar_json)


def _canonical(schema: dict[str, Any]) -> str:
    """One text per schema. Keys keep their order: the grammar has the model write properties in the
    order they are declared (a `reasoning` field before its `answer`), as OpenAI's strict mode does."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


@functools.lru_cache(maxsize=1024)
def _schema_problem(schema_json: str, strict: bool) -> str | None:
    """What is wrong with a schema to enforce, checked once per schema: a keyword strict mode's grammar
    cannot enforce, then that it is JSON Schema at all (the post-check validates with it), then that the
    engine's grammar backend compiles it."""
    import xgrammar

    schema = json.loads(schema_json)
    if strict and (found := unsupported_keyword(schema)) is not None:
        return found.explain()
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return f"is not a valid JSON Schema: {exc.message}"
    try:
        xgrammar.Grammar.from_json_schema(_canonical(for_grammar(schema)))
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the reason
        reason = re.sub(r"^\[[\d:]+\] \S+: ", "", str(exc).splitlines()[0])  # xgrammar's "[time] file:line: "
        return f"cannot be compiled into a grammar: {reason[:300]}"
    return None


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))
