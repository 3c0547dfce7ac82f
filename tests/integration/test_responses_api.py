"""`/v1/responses` through the running app (R9): the real model (SmolLM2 on vLLM), the replay model with
tools (through the tool-parsing deployment), `text.format` (through the structured-output deployment), and
the think and harmony replay models, streamed and not; every body and event validated against the spec;
the OpenAI SDK's `responses` helpers against the app."""

from __future__ import annotations

import json
from typing import Any, cast

import httpx
import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.integration.conftest import HARMONY_MODEL, REPLAY_MODEL, THINK_MODEL, VLLM_MODEL
from tests.openai_spec import assert_valid, assert_valid_event
from tests.sse_client import parse_events

pytestmark = pytest.mark.integration

READ_FILE = {
    "type": "function",
    "name": "read_file",
    "parameters": {"type": "object", "properties": {}},
    "strict": False,
}
NOW = {"type": "function", "name": "now", "parameters": {"type": "object", "properties": {}}, "strict": False}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def _create(http: httpx.Client, model: str, **fields: Any) -> dict[str, Any]:
    response = http.post("/responses", json={"model": model, **fields})
    assert response.status_code == 200, response.text
    assert_valid(response.json(), "Response")
    return cast(dict[str, Any], response.json())


def _stream(http: httpx.Client, model: str, **fields: Any) -> list[dict[str, Any]]:
    response = http.post("/responses", json={"model": model, "stream": True, **fields})
    assert response.status_code == 200, response.text
    events = parse_events(response.content)
    for event in events:
        assert_valid_event(event)
    assert [e["type"] for e in events][:2] == ["response.created", "response.in_progress"]
    return events


def _done(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["item"] for e in events if e["type"] == "response.output_item.done"]


def test_r9_the_real_model_answers_streamed_and_whole(http: httpx.Client) -> None:
    """R9.2, R9.3 with vLLM: greedy, the stream's text deltas are the whole answer's text."""
    fields: dict[str, Any] = {"input": "What is the capital of France?", "temperature": 0, "max_output_tokens": 24}
    whole = _create(http, VLLM_MODEL, **fields)
    assert whole["status"] in ("completed", "incomplete") and whole["model"] == VLLM_MODEL
    text = whole["output"][0]["content"][0]["text"]
    assert text and whole["usage"]["output_tokens"] <= 24
    events = _stream(http, VLLM_MODEL, **fields)
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text
    assert events[-1]["response"]["usage"]["input_tokens"] == whole["usage"]["input_tokens"]


def test_r9_the_real_model_writes_schema_valid_json_for_text_format(http: httpx.Client) -> None:
    """R9.1 `text.format` through the structured-output deployment: enforced while decoding (R7.1)."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    text = {"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}}
    body = _create(http, VLLM_MODEL, input="The capital of France, as JSON.", text=text, max_output_tokens=60)
    if body["status"] == "completed":
        assert set(json.loads(body["output"][0]["content"][0]["text"])) == {"city", "country"}
    events = _stream(http, VLLM_MODEL, input="The capital of France, as JSON.", text=text, max_output_tokens=60)
    assert events[-1]["type"] in ("response.completed", "response.incomplete")


def test_r9_the_real_model_is_forced_to_call_a_tool(http: httpx.Client) -> None:
    """`tool_choice: required` (R7.3): a schema-valid call, as a `function_call` item."""
    body = _create(http, VLLM_MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required")
    calls = [i for i in body["output"] if i["type"] == "function_call"]
    if body["status"] == "completed":
        assert calls and calls[0]["name"] == "get_weather" and "city" in json.loads(calls[0]["arguments"])


def test_r9_calls_go_through_the_tool_parsing_deployment(http: httpx.Client) -> None:
    fields: dict[str, Any] = {"input": "read the file please", "tools": [READ_FILE, NOW]}
    whole = _create(http, REPLAY_MODEL, **fields)
    assert [(i["type"], i.get("name")) for i in whole["output"]] == [
        ("message", None),
        ("function_call", "read_file"),
        ("function_call", "now"),
    ]
    events = _stream(http, REPLAY_MODEL, **fields)
    assert [i["arguments"] for i in _done(events)[1:]] == [i["arguments"] for i in whole["output"][1:]]
    assert events[-1]["type"] == "response.completed"


@pytest.mark.parametrize(
    ("model", "reasoning", "text"),
    [
        (THINK_MODEL, "The user asks for 2+2. That is 4.\n", "It is 4."),
        (HARMONY_MODEL, "A greeting. Reply briefly.", "Hello from gpt-oss!"),
    ],
)
def test_r9_reasoning_models_answer_with_a_reasoning_item(
    http: httpx.Client, model: str, reasoning: str, text: str
) -> None:
    whole = _create(http, model, input="hi", reasoning={"effort": "low", "summary": "auto"})
    first, message = whole["output"]
    assert (first["type"], first["content"][0]["text"]) == ("reasoning", reasoning)
    assert message["content"][0]["text"] == text
    assert 0 < whole["usage"]["output_tokens_details"]["reasoning_tokens"] < whole["usage"]["output_tokens"]
    events = _stream(http, model, input="hi")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert deltas == reasoning and [i["type"] for i in _done(events)] == ["reasoning", "message"]


def test_r9_harmony_reasoning_then_a_call(http: httpx.Client) -> None:
    whole = _create(http, HARMONY_MODEL, input="weather in Paris?", tools=[WEATHER])
    assert [(i["type"], i.get("name")) for i in whole["output"]] == [
        ("reasoning", None),
        ("function_call", "get_weather"),
    ]
    assert whole["output"][1]["arguments"] == '{"city": "Paris"}'


def test_r9_4_previous_response_id_is_a_400_naming_it(http: httpx.Client) -> None:
    response = http.post("/responses", json={"model": REPLAY_MODEL, "input": "hi", "previous_response_id": "resp_1"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "previous_response_id"
    assert_valid(response.json(), "ErrorResponse")


def test_r9_the_sdk_creates_streams_and_parses_against_the_app(client: OpenAI) -> None:
    created = client.responses.create(model=REPLAY_MODEL, input="please count")
    assert created.output_text == "one two three four five six seven eight nine ten"
    assert created.usage is not None and created.usage.output_tokens == 10
    tools: Any = [READ_FILE, NOW]
    with client.responses.stream(model=REPLAY_MODEL, input="read the file please", tools=tools) as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "Let me read it." and [i.type for i in final.output] == ["message", "function_call", "function_call"]

    class Weather(BaseModel):
        city: str
        days: int

    parsed = client.responses.parse(model=REPLAY_MODEL, input="weather as json", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", days=3)
