"""Validate bodies and stream chunks against OpenAI's published OpenAPI spec (../shared/reference)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [
    os.environ.get("AGENT_SERVE_REFERENCE_DIR", ""),
    str(ROOT.parent / "shared" / "reference"),
    "/work/shared/reference",
]


def reference_dir() -> Path:
    for candidate in _CANDIDATES:
        if candidate and (Path(candidate) / "openai-openapi" / "openapi.yaml").is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "OpenAI's OpenAPI spec not found; set AGENT_SERVE_REFERENCE_DIR to the shared/reference directory "
        f"(looked in: {', '.join(c for c in _CANDIDATES if c)})"
    )


def rewrite_schema(node: Any, rewrite: Callable[[dict[str, Any]], Any]) -> Any:
    """Apply `rewrite` to every object of a schema document, innermost first."""
    if isinstance(node, list):
        return [rewrite_schema(item, rewrite) for item in node]
    if not isinstance(node, dict):
        return node
    return rewrite({key: rewrite_schema(value, rewrite) for key, value in node.items()})


def _nullable_to_anyof(schema: dict[str, Any]) -> Any:
    """The spec mixes OpenAPI 3.0's `nullable: true` into 3.1 schemas; JSON Schema spells it anyOf-null."""
    if schema.pop("nullable", False):
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema that lists its properties admits no others (R3.6: only fields OpenAI defines). One
    that lists none (`EmptyModelParam`, a function's `parameters`) is any object."""
    if schema.get("properties") and "additionalProperties" not in schema and "allOf" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


@functools.cache
def _components() -> dict[str, Any]:
    with open(reference_dir() / "openai-openapi" / "openapi.yaml") as f:
        document = yaml.load(f, Loader=yaml.CSafeLoader)
    return cast(dict[str, Any], rewrite_schema(document["components"], _nullable_to_anyof))


# R6.1 is the one sanctioned addition to OpenAI's shapes: reasoning under both names clients read.
REASONING_FIELDS = {"reasoning_content": {"type": "string"}, "reasoning": {"type": "string"}}
REASONING_SCHEMAS = ("ChatCompletionResponseMessage", "ChatCompletionStreamResponseDelta")


def _merged_all_of(components: dict[str, Any]) -> dict[str, Any]:
    """Each `allOf` of object schemas (the Responses API's `Response`, `CreateResponse`) as one object schema
    listing all the parts' properties: closing the parts one by one would make each refuse the others'."""
    schemas = components["schemas"]

    def resolved(part: dict[str, Any]) -> dict[str, Any]:
        while set(part) <= {"$ref", "description"} and "$ref" in part:
            part = schemas[part["$ref"].rsplit("/", 1)[-1]]
        return merged(part)

    def merged(schema: dict[str, Any]) -> dict[str, Any]:
        if "allOf" not in schema:
            return schema
        rest = {key: value for key, value in schema.items() if key != "allOf"}
        properties: dict[str, Any] = {}
        required: set[str] = set()
        for part in [*(resolved(p) for p in schema["allOf"]), rest]:
            for name, value in part.get("properties", {}).items():
                properties[name] = {"allOf": [properties[name], value]} if name in properties else value
            required.update(part.get("required", []))
        if not properties:  # not an object made of parts (e.g. a constrained scalar)
            return schema
        return {**rest, "type": "object", "properties": properties, "required": sorted(required)}

    return {**components, "schemas": {name: merged(schema) for name, schema in schemas.items()}}


def _with_reasoning(components: dict[str, Any]) -> dict[str, Any]:
    schemas = dict(components["schemas"])
    for name in REASONING_SCHEMAS:
        schemas[name] = {**schemas[name], "properties": {**schemas[name]["properties"], **REASONING_FIELDS}}
    return {**components, "schemas": schemas}


@functools.cache
def validator(schema_name: str, closed_objects: bool = True) -> Draft202012Validator:
    components = _merged_all_of(_with_reasoning(_components()))
    components = rewrite_schema(components, closed) if closed_objects else components
    if schema_name not in components["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in OpenAI's spec")
    return Draft202012Validator({"components": components, "$ref": f"#/components/schemas/{schema_name}"})


def assert_valid(instance: Any, schema_name: str) -> None:
    """Valid against OpenAI's schema, with no fields the schema does not define (R3.6)."""
    errors = sorted(validator(schema_name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        details = "\n".join(
            f"  at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}" for e in errors
        )
        raise AssertionError(f"not a valid {schema_name}:\n{details}\ninstance: {str(instance)[:1000]}")


# A Responses stream's events by type: each validated against its own schema (`ResponseStreamEvent`, their
# union, would only say "not valid under any of the given schemas").
RESPONSE_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.custom_tool_call_input.delta": "ResponseCustomToolCallInputDeltaEvent",
    "response.custom_tool_call_input.done": "ResponseCustomToolCallInputDoneEvent",
    "response.reasoning_text.delta": "ResponseReasoningTextDeltaEvent",
    "response.reasoning_text.done": "ResponseReasoningTextDoneEvent",
}


def assert_valid_event(event: dict[str, Any]) -> None:
    """A Responses stream event, valid against its type's schema (R9.3)."""
    assert event.get("type") in RESPONSE_EVENT_SCHEMAS, f"not an event type this server sends: {event.get('type')}"
    assert_valid(event, RESPONSE_EVENT_SCHEMAS[event["type"]])
