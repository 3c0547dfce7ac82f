"""Malformed and edge-case requests, each with the answer OpenAI gives it (issue #17): a 400 naming the
place (`param`), a 404, or a 200 where OpenAI accepts what a careless server would refuse.

Shared by the in-process test of the HTTP surface (tests/unit/test_bad_input.py) and the test through the
whole stack (HTTP, HAProxy, ingress, post-processing stages, Ray, the engine). Bodies are JSON text, so
that cases can hold what a Python dict cannot send as such (lone surrogates, a body that is not JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse

CHAT = "/chat/completions"
COMPLETIONS = "/completions"
EMBEDDINGS = "/embeddings"

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
NAMELESS_TOOL = {"type": "function", "function": {"parameters": {"type": "object"}}}
LIST_PROPERTIES = {"type": "object", "properties": ["city", "days"]}
HI = [{"role": "user", "content": "Say hi."}]
CALLED = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: str  # JSON text, sent as is
    status: int  # what OpenAI answers
    param: str | None = None  # the `param` a 4xx names
    streamable: bool = True  # also sent with "stream": true, expecting the same status (never 200 + error)

    def streamed(self) -> Case:
        document = json.loads(self.body)
        return Case(
            f"{self.name} (streamed)", self.path, json.dumps({**document, "stream": True}), self.status, self.param
        )


def chat(name: str, status: int, param: str | None = None, model: Any = "{model}", **fields: Any) -> Case:
    if status == 200:  # a real model without a cap may write until its context is full
        fields.setdefault("max_tokens", 8)
    body = {"model": model, "messages": HI} | fields
    return Case(name, CHAT, json.dumps(body), status, param)


def _schema_format(schema: Any, strict: bool = True, name: str = "answer") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


CASES: list[Case] = [
    # tools and tool_choice
    chat("tool function is a string", 400, "tools[0].function", tools=[{"type": "function", "function": "x"}]),
    chat("tool function without name", 400, "tools[0].function.name", tools=[NAMELESS_TOOL]),
    chat("required with a nameless tool", 400, "tools[0].function.name", tools=[NAMELESS_TOOL], tool_choice="required"),
    chat("tools is a string", 400, "tools", tools="get_weather"),
    chat("tool of an unknown type", 400, "tools[0].type", tools=[{"type": "retrieval"}]),
    chat("tool without type", 400, "tools[0].type", tools=[{"function": {"name": "f"}}]),
    chat(
        "tool parameters is a list",
        400,
        "tools[0].function.parameters",
        tools=[{"type": "function", "function": {"name": "f", "parameters": ["a"]}}],
    ),
    chat("required without tools", 400, "tool_choice", tool_choice="required"),
    chat("named choice without tools", 400, "tool_choice", tool_choice={"type": "function", "function": {"name": "f"}}),
    chat("named choice without function", 400, "tool_choice.function", tools=[TOOL], tool_choice={"type": "function"}),
    chat("tool_choice unknown word", 400, "tool_choice", tools=[TOOL], tool_choice="sometimes"),
    chat(
        "tool_choice names an undeclared tool",
        400,
        "tool_choice.function.name",
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "delete_everything"}},
    ),
    chat(
        "allowed_tools names an undeclared tool",
        400,
        "tool_choice.allowed_tools.tools[0].function.name",
        tools=[TOOL],
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "nope"}}]},
        },
    ),
    chat("parallel_tool_calls is a string", 400, "parallel_tool_calls", tools=[TOOL], parallel_tool_calls="yes"),
    chat(
        "strict tool whose properties is a list",
        400,
        "tools[0].function.parameters",
        tools=[{"type": "function", "function": {"name": "f", "strict": True, "parameters": LIST_PROPERTIES}}],
    ),
    chat(
        "required tool whose properties is a list",
        400,
        "tools[0].function.parameters",
        tool_choice="required",
        tools=[{"type": "function", "function": {"name": "f", "parameters": LIST_PROPERTIES}}],
    ),
    chat(
        "strict tool whose schema is not JSON Schema",
        400,
        "tools[0].function.parameters",
        tools=[{"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "objekt"}}}],
    ),
    chat("tool_choice none with tools", 200, tools=[TOOL], tool_choice="none"),
    chat("tool_choice auto without tools", 200, tool_choice="auto"),
    chat(
        "allowed_tools under auto",
        200,
        tools=[TOOL],
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
        },
    ),
    chat("tool without parameters", 200, tools=[{"type": "function", "function": {"name": "now"}}]),
    # response_format
    chat("response_format of an unknown type", 400, "response_format", response_format={"type": "xml"}),
    chat("response_format is a string", 400, "response_format", response_format="json"),
    chat(
        "json_schema without json_schema", 400, "response_format.json_schema", response_format={"type": "json_schema"}
    ),
    chat(
        "json_schema with an empty name",
        400,
        "response_format.json_schema.name",
        response_format={"type": "json_schema", "json_schema": {"name": ""}},
    ),
    chat(
        "json_schema whose schema is a string",
        400,
        "response_format.json_schema.schema",
        response_format=_schema_format("object"),
    ),
    chat(
        "strict json_schema whose properties is a list",
        400,
        "response_format.json_schema.schema",
        response_format=_schema_format(LIST_PROPERTIES),
    ),
    chat(
        "json_schema that is not JSON Schema",
        400,
        "response_format.json_schema.schema",
        response_format=_schema_format({"type": "objekt"}, strict=False),
    ),
    chat(
        "json_schema with a dangling $ref",
        400,
        "response_format.json_schema.schema",
        response_format=_schema_format({"$ref": "#/$defs/missing"}),
    ),
    chat(
        "strict json_schema with an unsupported keyword",
        400,
        "response_format.json_schema.schema",
        response_format=_schema_format({"type": "object", "not": {"required": ["a"]}}),
    ),
    chat("legacy functions is a string", 400, "functions", functions="get_weather"),
    chat("legacy function_call unknown word", 400, "function_call", function_call="maybe"),
    chat("legacy function_call name is a number", 400, "function_call.name", function_call={"name": 5}),
    # messages
    chat("no messages", 400, "messages", messages=[]),
    chat("messages is a string", 400, "messages", messages="hi"),
    chat("unknown role", 400, "messages[0]", messages=[{"role": "robot", "content": "hi"}]),
    chat("message without role", 400, "messages[0]", messages=[{"content": "hi"}]),
    chat("user content null", 400, "messages[0].content", messages=[{"role": "user", "content": None}]),
    chat("user content is a number", 400, "messages[0].content", messages=[{"role": "user", "content": 5}]),
    chat(
        "text part without text",
        400,
        "messages[0].content[0].text",
        messages=[{"role": "user", "content": [{"type": "text"}]}],
    ),
    chat(
        "part of an unknown type",
        400,
        "messages[0].content[0]",
        messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}],
    ),
    chat(
        "image part for a text-only model",
        400,
        "messages[0].content[0]",
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
    ),
    chat(
        "tool message without tool_call_id",
        400,
        "messages[2].tool_call_id",
        messages=[*CALLED, {"role": "tool", "content": "Sunny."}],
    ),
    chat(
        "tool call without arguments",
        400,
        "messages[1].tool_calls[0].function.arguments",
        messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]},
        ],
    ),
    chat(
        "tool call arguments as an object",
        400,
        "messages[1].tool_calls[0].function.arguments",
        messages=[
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
            },
        ],
    ),
    chat(
        "function message without name",
        400,
        "messages[1].name",
        messages=[{"role": "user", "content": "x"}, {"role": "function", "content": "42"}],
    ),
    chat(
        "a tool round trip",
        200,
        tools=[TOOL],
        messages=[*CALLED, {"role": "tool", "tool_call_id": "call_1", "content": "Sunny."}],
    ),
    chat(
        "developer message and parts with cache_control",
        200,
        messages=[
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": [{"type": "text", "text": "Say hi."}]},
        ],
    ),
    chat(
        "assistant content as an empty string",
        200,
        messages=[*HI, {"role": "assistant", "content": ""}, {"role": "user", "content": "Again."}],
    ),
    # sampling fields
    chat("temperature is a string", 400, "temperature", temperature="0.5"),
    chat("temperature above 2", 400, "temperature", temperature=3),
    chat("top_p above 1", 400, "top_p", top_p=1.5),
    chat("n of 0", 400, "n", n=0),
    chat("max_tokens of 0", 400, "max_tokens", max_tokens=0),
    chat("max_tokens is a string", 400, "max_tokens", max_tokens="10"),
    chat("seed beyond int64", 400, "seed", seed=10**20),
    chat("stop is a number", 400, "stop", stop=5),
    chat("logit_bias value is a string", 400, "logit_bias.50", logit_bias={"50": "up"}),
    chat("presence_penalty above 2", 400, "presence_penalty", presence_penalty=3),
    chat("stream is a string", 400, "stream", stream="yes"),
    chat("top_logprobs above 20", 400, "top_logprobs", logprobs=True, top_logprobs=21),
    chat("top_logprobs without logprobs", 400, "top_logprobs", top_logprobs=2),
    chat("reasoning_effort unknown", 400, "reasoning_effort", reasoning_effort="extreme"),
    chat("temperature as an integer", 200, temperature=0, max_tokens=4),
    chat("top_p of 0 is greedy", 200, top_p=0, max_tokens=4),
    chat("n greedy choices", 200, n=2, temperature=0, max_tokens=4),
    chat("seed at the top of int64", 200, seed=2**63 - 1, max_tokens=4),
    chat("an unknown vendor field", 200, max_tokens=4, cache_salt="x", chat_template_kwargs={"a": 1}),
    # text that is valid JSON but awkward
    Case(
        "a lone surrogate in a message",
        CHAT,
        '{"model": "{model}", "max_tokens": 4, "messages": [{"role": "user", "content": "broken \\ud800 file"}]}',
        200,
    ),
    Case(
        "a NUL character in a message",
        CHAT,
        '{"model": "{model}", "max_tokens": 4, "messages": [{"role": "user", "content": "a\\u0000b"}]}',
        200,
    ),
    Case(
        "a lone surrogate in a tool name",
        CHAT,
        '{"model": "{model}", "messages": [{"role": "user", "content": "x"}], "tools": [TOOL],'
        ' "tool_choice": {"type": "function", "function": {"name": "\\udc00"}}}'.replace("TOOL", json.dumps(TOOL)),
        400,
        "tool_choice.function.name",
    ),
    # model and body
    chat("model is null", 400, "model", model=None),
    chat("model is a number", 400, "model", model=5),
    chat("unknown model", 404, "model", model="gpt-9"),
    Case("body is a JSON array", CHAT, "[1, 2]", 400, streamable=False),
    Case("body is not JSON", CHAT, "{'model': 1}", 400, streamable=False),
    Case("empty body", CHAT, "", 400, streamable=False),
    # text completions
    Case("completion without prompt", COMPLETIONS, '{"model": "{model}"}', 400, "prompt"),
    Case("completion prompt is a number", COMPLETIONS, '{"model": "{model}", "prompt": 5}', 400, "prompt"),
    Case("completion echo is a string", COMPLETIONS, '{"model": "{model}", "prompt": "a", "echo": "yes"}', 400, "echo"),
    Case(
        "completion fanning out past the limit",
        COMPLETIONS,
        json.dumps({"model": "{model}", "prompt": ["a"] * 100, "n": 2}),
        400,
        "prompt",
    ),
    Case(
        "completion with a lone surrogate",
        COMPLETIONS,
        '{"model": "{model}", "prompt": "broken \\udfff", "max_tokens": 4}',
        200,
    ),
    # embeddings
    Case("embeddings without input", EMBEDDINGS, '{"model": "{model}"}', 400, "input", streamable=False),
    Case(
        "embeddings with an unknown encoding",
        EMBEDDINGS,
        '{"model": "{model}", "input": "a", "encoding_format": "hex"}',
        400,
        "encoding_format",
        streamable=False,
    ),
]

# Dropped from the streamed variants: with `stream` set to true they are other cases.
_NOT_STREAMED = {"stream is a string"}


def with_streamed_variants(cases: list[Case]) -> list[Case]:
    """Each case, and each streamable one again with "stream": true: a refusal must be the same 4xx status
    before the stream starts, never a 200 followed by an error event."""
    streamed = [c.streamed() for c in cases if c.streamable and c.name not in _NOT_STREAMED and c.status != 200]
    return [*cases, *streamed]


def body_for(case: Case, model: str) -> bytes:
    return case.body.replace("{model}", model).encode()


class Response(Protocol):
    """What the check reads of a response: httpx's, or the test client's (which has its own httpx)."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def content(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def json(self) -> Any: ...


def assert_openais_answer(response: Response, case: Case) -> None:
    """The status OpenAI gives the case; a refusal in OpenAI's envelope naming the place; an answer (whole or
    streamed) without an error in it."""
    assert response.status_code == case.status, response.text
    if case.status >= 400:
        body = response.json()
        assert_valid(body, "ErrorResponse")
        if case.param is not None:
            assert body["error"]["param"] == case.param, body
    elif response.headers["content-type"].startswith("text/event-stream"):
        chunks = parse_sse(response.content)
        assert chunks and all("error" not in chunk for chunk in chunks), chunks[-2:]
    else:
        assert "error" not in response.json()
