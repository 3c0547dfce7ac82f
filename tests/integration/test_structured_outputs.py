"""Structured outputs through the app (R7.1, R7.2): the StructuredOutput deployment in front of real vLLM
(the small model, constrained while decoding) and of the replay engine (a scripted invalid answer)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.integration.conftest import REPLAY_MODEL, VLLM_MODEL, RunningApp
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse

pytestmark = pytest.mark.integration


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required if required is not None else list(properties),
        "additionalProperties": False,
    }


# Twenty strict schemas: nested objects, arrays with min/max items, enums, integer/number/boolean,
# required fields, anyOf, $defs references.
SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("a person", _closed({"name": {"type": "string"}, "age": {"type": "integer"}})),
    ("a product", _closed({"title": {"type": "string"}, "price": {"type": "number"}, "in_stock": {"type": "boolean"}})),
    ("a log level", _closed({"level": {"type": "string", "enum": ["debug", "info", "warn", "error"]}})),
    ("three tags", _closed({"tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}})),
    ("some scores", _closed({"scores": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4}})),
    (
        "an address",
        _closed(
            {"address": _closed({"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"}})}
        ),
    ),
    ("a point", _closed({"point": _closed({"x": {"type": "number"}, "y": {"type": "number"}})})),
    (
        "a todo list",
        _closed(
            {
                "items": {
                    "type": "array",
                    "maxItems": 3,
                    "items": _closed({"task": {"type": "string"}, "done": {"type": "boolean"}}),
                }
            }
        ),
    ),
    (
        "a weather report",
        _closed(
            {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["C", "F"]},
                "temps": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
            }
        ),
    ),
    (
        "a user, maybe with an email",
        _closed({"name": {"type": "string"}, "email": {"anyOf": [{"type": "string"}, {"type": "null"}]}}),
    ),
    ("an id", _closed({"id": {"anyOf": [{"type": "integer"}, {"type": "string", "enum": ["none"]}]}})),
    (
        "a shape",
        _closed(
            {
                "shape": {
                    "anyOf": [
                        _closed({"radius": {"type": "number"}}),
                        _closed({"width": {"type": "number"}, "height": {"type": "number"}}),
                    ]
                }
            }
        ),
    ),
    (
        "a team",
        {
            "$defs": {
                "member": _closed({"name": {"type": "string"}, "role": {"type": "string", "enum": ["dev", "pm"]}})
            },
            **_closed(
                {
                    "lead": {"$ref": "#/$defs/member"},
                    "members": {"type": "array", "items": {"$ref": "#/$defs/member"}, "maxItems": 2},
                }
            ),
        },
    ),
    (
        "a route",
        {
            "$defs": {"stop": _closed({"name": {"type": "string"}, "minutes": {"type": "integer"}})},
            **_closed({"from": {"$ref": "#/$defs/stop"}, "to": {"$ref": "#/$defs/stop"}}),
        },
    ),
    ("a config", _closed({"debug": {"type": "boolean"}, "retries": {"type": "integer"}, "ratio": {"type": "number"}})),
    (
        "a git command",
        _closed({"command": {"type": "string", "enum": ["commit", "push", "pull"]}, "force": {"type": "boolean"}}),
    ),
    (
        "a matrix",
        _closed(
            {
                "rows": {
                    "type": "array",
                    "maxItems": 2,
                    "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                }
            }
        ),
    ),
    (
        "a book",
        _closed(
            {
                "title": {"type": "string"},
                "author": _closed({"first": {"type": "string"}, "last": {"type": "string"}}),
                "year": {"type": "integer"},
            }
        ),
    ),
    (
        "an event, optional notes",
        _closed(
            {"name": {"type": "string"}, "day": {"type": "integer"}, "notes": {"type": "string"}},
            required=["name", "day"],
        ),
    ),
    ("a yes/no answer", _closed({"answer": {"type": "boolean"}, "confidence": {"type": "number"}})),
]


def _answer(http: httpx.Client, body: dict[str, Any], stream: bool) -> tuple[str, str]:
    """(content, finish_reason), every body and chunk validated against OpenAI's spec."""
    response = http.post("/chat/completions", json={**body, "stream": stream})
    assert response.status_code == 200, response.text
    if not stream:
        assert_valid(response.json(), "CreateChatCompletionResponse")
        choice = response.json()["choices"][0]
        return choice["message"]["content"], choice["finish_reason"]
    chunks = parse_sse(response.content)
    assert "error" not in chunks[-1], chunks[-1]  # a post-check violation would end the stream with an error
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return content, [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ][0]


def test_r7_1_strict_schemas_from_the_real_model_always_validate(http: httpx.Client) -> None:
    """SmolLM2-135M under 20 strict schemas, whole and streamed by turns (both ways over a wider sweep is
    load_tests/schema_sweep.py's job): every answer that finishes with `stop` validates."""
    failures, truncated = [], []
    for i, (what, schema) in enumerate(SCHEMAS):
        stream = i % 2 == 1
        body = {
            "model": VLLM_MODEL,
            "max_tokens": 300,
            "temperature": 0.7,
            "seed": i,
            "messages": [{"role": "user", "content": f"Describe {what} as JSON."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": f"s{i}", "schema": schema, "strict": True},
            },
        }
        content, finish = _answer(http, body, stream)
        if finish == "length":
            truncated.append(i)
            continue
        try:
            jsonschema.validate(json.loads(content), schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            failures.append((i, stream, content, str(exc)[:200]))
    print(
        f"{len(SCHEMAS)} strict schemas (whole and streamed by turns): "
        f"{len(SCHEMAS) - len(truncated)} finished "
        f"with stop, all valid; cut by the cap: {truncated}"
    )
    assert not failures, failures
    assert len(truncated) <= 2, f"answers cut by the 300-token cap: {truncated}"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_r7_1_json_object_always_parses_as_an_object(http: httpx.Client, stream: bool) -> None:
    for i, ask in enumerate(["List three fruits.", "What is the capital of France?", "Say hello."]):
        body = {
            "model": VLLM_MODEL,
            "max_tokens": 200,
            "seed": i,
            "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": f"{ask} Answer in JSON."}],
        }
        content, finish = _answer(http, body, stream)
        if finish == "stop":
            assert isinstance(json.loads(content), dict), content


class Weather(BaseModel):
    city: str
    days: int


def test_sdk_parse_returns_a_parsed_object(running_app: RunningApp) -> None:
    """`client.chat.completions.parse(response_format=PydanticModel)`: the SDK sends a strict json_schema
    and parses the answer into the model."""
    client = OpenAI(base_url=running_app.base_url, api_key="unused", max_retries=0, timeout=300)
    completion = client.chat.completions.parse(
        model=VLLM_MODEL,
        messages=[{"role": "user", "content": "Weather in Paris for the next 3 days, as JSON."}],
        response_format=Weather,
        max_tokens=100,
        seed=0,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather)
    replayed = client.chat.completions.parse(
        model=REPLAY_MODEL, messages=[{"role": "user", "content": "weather as json"}], response_format=Weather
    )
    assert replayed.choices[0].message.parsed == Weather(city="Paris", days=3)


def test_r7_1_an_invalid_answer_is_reported_not_returned(http: httpx.Client) -> None:
    """The replay engine ignores constraints: its scripted answer breaks the schema, and the post-check
    reports it (500 naming the violation; a stream ends with an error event instead of a finish_reason)."""
    schema = _closed({"city": {"type": "string"}, "days": {"type": "integer"}})
    body = {
        "model": REPLAY_MODEL,
        "messages": [{"role": "user", "content": "broken json"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": schema, "strict": True},
        },
    }
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 500 and response.json()["error"]["code"] == "response_format_violation"
    assert_valid(response.json(), "ErrorResponse")
    chunks = parse_sse(http.post("/chat/completions", json={**body, "stream": True}).content)
    assert chunks[-1]["error"]["code"] == "response_format_violation"


def test_r7_2_unsupported_strict_keyword_is_a_400_before_generation(running_app: RunningApp) -> None:
    client = OpenAI(base_url=running_app.base_url, api_key="unused", max_retries=0)
    schema: dict[str, Any] = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=VLLM_MODEL,
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}},
        )
    assert "'uniqueItems'" in raised.value.message and raised.value.param == "response_format.json_schema.schema"
