"""Reasoning through the running app (R6): replay engines emitting `<think>` and gpt-oss harmony output,
through the engine deployment (plain chat) and the tool-parsing deployment (requests with tools)."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest

from tests.integration.conftest import HARMONY_MODEL, REPLAY_MODEL, THINK_MODEL, VLLM_MODEL
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse

pytestmark = pytest.mark.integration

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
READ_TOOL = {
    "type": "function",
    "function": {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}},
}


def _chat(http: httpx.Client, model: str, text: str, **body: Any) -> dict[str, Any]:
    response = http.post(
        "/chat/completions", json={"model": model, "messages": [{"role": "user", "content": text}], **body}
    )
    assert response.status_code == 200, response.text
    assert_valid(response.json(), "CreateChatCompletionResponse")
    return cast(dict[str, Any], response.json())


def _stream(http: httpx.Client, model: str, text: str, **body: Any) -> list[dict[str, Any]]:
    response = http.post(
        "/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "stream_options": {"include_usage": True},
            **body,
        },
    )
    assert response.status_code == 200, response.text
    chunks = parse_sse(response.content)
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    return chunks


def _joined(chunks: list[dict[str, Any]], field: str) -> str:
    return "".join(c["choices"][0]["delta"].get(field, "") for c in chunks if c["choices"])


@pytest.mark.parametrize(
    ("model", "reasoning", "content"),
    [
        (THINK_MODEL, "The user asks for 2+2. That is 4.\n", "It is 4."),
        (HARMONY_MODEL, "A greeting. Reply briefly.", "Hello from gpt-oss!"),
    ],
)
def test_r6_1_reasoning_in_both_fields_streamed_and_not(
    http: httpx.Client, model: str, reasoning: str, content: str
) -> None:
    body = _chat(http, model, "hi")
    message = body["choices"][0]["message"]
    assert (message["reasoning_content"], message["reasoning"], message["content"]) == (reasoning, reasoning, content)
    reasoning_tokens = body["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < reasoning_tokens < body["usage"]["completion_tokens"]

    chunks = _stream(http, model, "hi")
    assert _joined(chunks, "reasoning_content") == _joined(chunks, "reasoning") == reasoning
    assert _joined(chunks, "content") == content
    streamed = chunks[-1]["usage"]  # but the cached tokens: the whole answer's prompt is in the cache now
    assert {**streamed, "prompt_tokens_details": None} == {**body["usage"], "prompt_tokens_details": None}


def test_r6_1_harmony_reasoning_and_tool_call_through_tool_parsing(http: httpx.Client) -> None:
    """gpt-oss: analysis channel -> reasoning, `to=functions.get_weather` -> a call (R4.5), both streamed."""
    body = _chat(http, HARMONY_MODEL, "weather in Paris?", tools=[WEATHER_TOOL])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["reasoning_content"] == "The user wants the weather in Paris."
    call = choice["message"]["tool_calls"][0]
    assert (call["function"]["name"], call["function"]["arguments"]) == ("get_weather", '{"city": "Paris"}')

    chunks = _stream(http, HARMONY_MODEL, "weather in Paris?", tools=[WEATHER_TOOL])
    calls = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert "".join(d["function"]["arguments"] for d in calls) == '{"city": "Paris"}'
    assert _joined(chunks, "reasoning") == "The user wants the weather in Paris."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == [
        "tool_calls"
    ]


def test_r6_1_think_model_reasons_then_calls_a_tool(http: httpx.Client) -> None:
    message = _chat(http, THINK_MODEL, "please read the file", tools=[READ_TOOL])["choices"][0]["message"]
    assert message["reasoning"] == "I should read it first.\n"
    assert message["tool_calls"][0]["function"]["arguments"] == '{"path": "a.txt"}'


def test_r6_2_a_turn_that_only_reasoned_is_not_returned_empty(http: httpx.Client) -> None:
    body = _chat(http, THINK_MODEL, "only think")
    message = body["choices"][0]["message"]
    assert message["content"] == "The answer is 42." and body["choices"][0]["finish_reason"] == "stop"
    assert _joined(_stream(http, THINK_MODEL, "only think"), "content") == "The answer is 42."


@pytest.mark.parametrize("model", [VLLM_MODEL, REPLAY_MODEL, THINK_MODEL, HARMONY_MODEL])
@pytest.mark.parametrize("effort", ["none", "minimal", "low", "medium", "high", "xhigh", "max"])
def test_r6_3_reasoning_effort_is_accepted_for_every_model(http: httpx.Client, model: str, effort: str) -> None:
    body = _chat(http, model, "hi", reasoning_effort=effort, max_tokens=4)
    assert body["choices"][0]["message"]["role"] == "assistant"
    if model in (VLLM_MODEL, REPLAY_MODEL):  # no reasoning: nothing counted, no reasoning fields
        assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
        assert "reasoning_content" not in body["choices"][0]["message"]
