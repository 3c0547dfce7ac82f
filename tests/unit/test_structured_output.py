"""Structured outputs (R7.1, R7.2): response_format checks, strict-mode refusals naming the keyword,
compilation cached per schema, and the post-check that turns an invalid answer into an error."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import pytest
from pydantic import TypeAdapter

from serve_app.engines.replay import ReplayEngine
from serve_app.model_service import ModelService
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.protocol.tools import ResponseFormat
from serve_app.schema_support import UNSUPPORTED
from serve_app.structured_output import VIOLATION_CODE, ResponseConstraint, _schema_problem
from serve_app.structured_output import response_constraint as _constraint_of
from tests.conftest import REPLAY_SCRIPT
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse, read_frames

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


def _json_schema(schema: Any, strict: bool = True, name: str = "weather") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def response_constraint(response_format: dict[str, Any] | None) -> ResponseConstraint | OpenAIError | None:
    """The constraint of a `response_format` as the request validated it (its shape is checked there)."""
    typed = None if response_format is None else TypeAdapter(ResponseFormat).validate_python(response_format)
    return _constraint_of(typed)


def _error(result: object) -> OpenAIError:
    assert isinstance(result, OpenAIError), result
    assert result.status_code == 400
    return result


def test_text_and_absent_formats_need_no_constraint() -> None:
    assert response_constraint(None) is None and response_constraint({"type": "text"}) is None


def test_json_object_is_enforced_as_any_object() -> None:
    constraint = response_constraint({"type": "json_object"})
    assert isinstance(constraint, ResponseConstraint) and constraint.schema == {"type": "object"}
    assert constraint.violation('{"a": [1]}') is None
    assert "not of type 'object'" in (constraint.violation("[1, 2]") or "")
    assert "not JSON" in (constraint.violation("{'a': 1}") or "")


@pytest.mark.parametrize("keyword", sorted(UNSUPPORTED))
def test_r7_2_strict_schemas_with_unsupported_keywords_are_a_400_naming_it(keyword: str) -> None:
    """Every keyword strict mode refuses, nested in a property, before any token is generated."""
    schema = {"type": "object", "properties": {"a": {"type": "array", keyword: {}}}}
    error = _error(response_constraint(_json_schema(schema)))
    assert f"'{keyword}'" in error.message and "properties.a" in error.message
    assert error.param == "response_format.json_schema.schema"


def test_non_strict_schemas_enforce_what_they_can() -> None:
    """Without strict, an unenforceable keyword is not refused: decoding enforces the rest and the
    post-check judges the answer."""
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    constraint = response_constraint(_json_schema(schema, strict=False))
    assert isinstance(constraint, ResponseConstraint)
    assert constraint.violation("[1, 2]") is None
    assert "non-unique" in (constraint.violation("[1, 1]") or "")


@pytest.mark.parametrize(
    ("response_format", "says"),
    [
        (_json_schema({"type": "objekt"}), "not a valid JSON Schema"),
        (_json_schema({"type": "object", "properties": ["a", "b"]}), "not a valid JSON Schema"),
        (_json_schema({"$ref": "#/$defs/missing"}), "cannot be compiled"),
    ],
)
def test_schemas_that_cannot_be_enforced_are_a_400(response_format: dict[str, Any], says: str) -> None:
    """(Malformed shapes of `response_format` itself are refused with the request: tests/bad_requests.py.)"""
    error = _error(response_constraint(response_format))
    assert error.param == "response_format.json_schema.schema" and says in error.message


def test_compilation_is_cached_per_schema() -> None:
    schema = {"type": "object", "properties": {"zz_cache_probe": {"type": "boolean"}}}
    first = response_constraint(_json_schema(schema))
    hits = _schema_problem.cache_info().hits
    second = response_constraint(_json_schema(dict(schema)))
    assert _schema_problem.cache_info().hits == hits + 1
    assert isinstance(first, ResponseConstraint) and first == second and len(first.schema_hash) == 16


def test_properties_keep_their_declared_order() -> None:
    """The grammar has the model write properties in the schema's order, as OpenAI's strict mode does: a
    `reasoning` field declared before `answer` is written first. Sorting the keys would reverse them."""
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}}}
    constraint = response_constraint(_json_schema(schema))
    assert isinstance(constraint, ResponseConstraint)
    assert list(constraint.grammar_schema["properties"]) == ["reasoning", "answer"]


def test_violations_name_the_place() -> None:
    constraint = response_constraint(_json_schema(WEATHER))
    assert isinstance(constraint, ResponseConstraint)
    assert constraint.violation('{"city": "Paris", "days": 3}') is None
    assert "at days" in (constraint.violation('{"city": "Paris", "days": "3"}') or "")
    error = constraint.violation_error("reason", "x" * 2000)
    assert error.status_code == 500 and error.code == VIOLATION_CODE and len(error.message) < 700


@pytest.fixture
def service(tokenizer: Any) -> ModelService:
    return ModelService("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 4096, 0.0), tokenizer)


def _request(ask: str, **fields: Any) -> ChatCompletionRequest:
    body = {
        "model": "replay-model",
        "messages": [{"role": "user", "content": ask}],
        "response_format": _json_schema(WEATHER),
        **fields,
    }
    return ChatCompletionRequest.model_validate(body)


def _complete(service: ModelService, request: ChatCompletionRequest) -> bytes | OpenAIError:
    plan = service.plan(request)
    assert not isinstance(plan, OpenAIError), plan
    return asyncio.run(plan.complete())


def _json(result: bytes | OpenAIError) -> dict[str, Any]:
    """The JSON body of a whole (non-streamed) response, which must not be an error."""
    assert isinstance(result, bytes), result
    return cast(dict[str, Any], json.loads(result))


def _stream(service: ModelService, request: ChatCompletionRequest) -> list[dict[str, Any]]:
    plan = service.plan(request)
    assert not isinstance(plan, OpenAIError), plan

    async def frames() -> bytes:
        return await read_frames(plan.stream())

    return parse_sse(asyncio.run(frames()))


def test_r7_1_the_schema_reaches_the_engine_and_valid_answers_pass(service: ModelService) -> None:
    plan = service.plan(_request("weather as json"))
    assert not isinstance(plan, OpenAIError)
    assert plan.planned.generation.sampling.json_schema == WEATHER
    body = _json(_complete(service, _request("weather as json")))
    assert_valid(body, "CreateChatCompletionResponse")
    assert json.loads(body["choices"][0]["message"]["content"]) == {"city": "Paris", "days": 3}


def test_r7_1_an_answer_that_breaks_the_schema_is_an_error_not_a_success(service: ModelService) -> None:
    """The post-check: whole answers become a 500 naming the violation; streams end with an error event
    instead of a finish_reason."""
    error = _complete(service, _request("broken json"))
    assert isinstance(error, OpenAIError) and error.code == VIOLATION_CODE and "at days" in error.message
    chunks = _stream(service, _request("broken json", stream=True))
    assert chunks[-1]["error"]["code"] == VIOLATION_CODE
    assert not any(c["choices"][0]["finish_reason"] for c in chunks[:-1] if c.get("choices"))


def test_r7_2_truncation_is_length_with_the_partial_text(service: ModelService) -> None:
    body = _json(_complete(service, _request("weather as json", max_tokens=3)))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] and not body["choices"][0]["message"]["content"].endswith("}")


TOOL: dict[str, Any] = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("fields", "structured", "tools"),
    [
        ({}, False, False),
        ({"response_format": {"type": "text"}}, False, False),
        ({"response_format": {"type": "json_object"}}, True, False),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n"}}}, True, False),
        ({"tools": [TOOL]}, False, True),
        ({"tools": [TOOL], "tool_choice": "none"}, False, False),
        ({"tools": [TOOL], "tool_choice": "required"}, True, True),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}}, True, True),
        ({"tools": [{**TOOL, "function": {**TOOL["function"], "strict": True}}]}, True, True),
    ],
)
def test_routing_sends_only_what_needs_it_through_post_processing(
    fields: dict[str, Any], structured: bool, tools: bool
) -> None:
    """Anything to enforce goes through StructuredOutput; free tool calls through ToolParsing; the rest
    straight to the engine."""
    from serve_app.routing import needs_structured_output, needs_tool_parsing

    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}
    )
    assert (needs_structured_output(request), needs_tool_parsing(request)) == (structured, tools)
