"""`/v1/responses` (R9) without Ray: the translation into chat, the `response` object and its stream of
events over the replay engine, every body and event checked against OpenAI's spec, and the OpenAI SDK's
`responses.create`, `responses.stream` and `responses.parse` against the app."""

from __future__ import annotations

import json
from typing import Any, cast

import openai
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from serve_app.config import ServerOptions
from serve_app.engines.replay import ReplayEngine
from serve_app.http_api import create_http_app
from serve_app.protocol.errors import OpenAIError, invalid_request
from serve_app.protocol.responses import OutputMessage, ResponsesRequest
from serve_app.protocol.tools import NamedToolChoice
from serve_app.reasoning import ReasoningFormat
from serve_app.responses import Translation, translate
from serve_app.responses_output import ItemWriter
from serve_app.tool_parsers.base import ContentDelta, Event, ToolCallArguments, ToolCallStart
from tests.conftest import REPLAY_SCRIPT, ROOT
from tests.in_process import BreakingBackend, InProcessBackend
from tests.openai_spec import assert_valid, assert_valid_event
from tests.sse_client import parse_events

THINK_SCRIPT = ROOT / "tests" / "fixtures" / "think_script.yaml"
READ_FILE: dict[str, Any] = {
    "type": "function",
    "name": "read_file",
    "description": "Read a file.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "lines": {"type": "array"}}},
    "strict": False,
}
NOW: dict[str, Any] = {"type": "function", "name": "now", "parameters": {"type": "object", "properties": {}}}
APPLY_PATCH: dict[str, Any] = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
}


def _client(
    tokenizer: Any, script: Any = REPLAY_SCRIPT, backend: type[InProcessBackend] = InProcessBackend
) -> TestClient:
    reasoning: ReasoningFormat | None = "think" if script == THINK_SCRIPT else None
    engine = ReplayEngine(tokenizer, script, 512, 0.0)
    return TestClient(create_http_app(backend("replay-model", engine, tokenizer, reasoning), ServerOptions()))


@pytest.fixture
def client(tokenizer: Any) -> TestClient:
    return _client(tokenizer)


def _create(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/responses", json={"model": "replay-model", **fields})
    assert response.status_code == 200, response.text
    body = cast(dict[str, Any], response.json())
    assert_valid(body, "Response")
    return body


def _stream(client: TestClient, **fields: Any) -> list[dict[str, Any]]:
    """R9.3: the events, each valid against its own schema; one `response.created` and `.in_progress` first,
    exactly one terminal event last."""
    response = client.post("/v1/responses", json={"model": "replay-model", "stream": True, **fields})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.content)
    for event in events:
        assert_valid_event(event)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] in ("response.completed", "response.incomplete", "response.failed"), kinds
    assert sum(k in ("response.completed", "response.incomplete", "response.failed") for k in kinds) == 1
    return events


def _final(events: list[dict[str, Any]]) -> dict[str, Any]:
    return cast(dict[str, Any], events[-1]["response"])


def _items_done(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["item"] for e in events if e["type"] == "response.output_item.done"]


# --- the translation into chat -----------------------------------------------------------------------


def _translate(**fields: Any) -> Translation:
    translation = translate(ResponsesRequest.model_validate({"model": "m", **fields}))
    assert isinstance(translation, Translation), translation
    return translation


def test_the_prompt_cache_key_travels_with_the_conversation() -> None:
    """Codex names its conversation in `prompt_cache_key`: the engine router keeps its turns together by it."""
    assert _translate(input="hi", prompt_cache_key="conversation-1").chat.prompt_cache_key == "conversation-1"


def test_a_conversation_of_items_is_the_chat_conversation_it_stands_for() -> None:
    """R9.1: instructions, roles, an assistant's reasoning, words and calls as one message, call outputs as
    tool messages, a custom tool's call as a call of the function it is offered as."""
    chat = _translate(
        instructions="Be brief.",
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
            {"role": "user", "content": "Read a.txt and patch it."},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Hmm."}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Reading."}]},
            {"type": "function_call", "call_id": "c1", "name": "read_file", "arguments": '{"path":"a.txt"}'},
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "function_call_output", "call_id": "c1", "output": "hi"},
            {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "ok"}]},
            {"role": "user", "content": "Thanks."},
        ],
        tools=[READ_FILE, APPLY_PATCH],
    ).chat
    messages = [m.model_dump(exclude_none=True) for m in chat.messages]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Read a.txt and patch it."},
        {
            "role": "assistant",
            "content": "Reading.",
            "reasoning_content": "Hmm.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path":"a.txt"}'}},
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": '{"input": "*** Begin Patch"}'},
                },
            ],
        },
        {"role": "tool", "content": "hi", "tool_call_id": "c1"},
        {"role": "tool", "content": "ok", "tool_call_id": "c2"},
        {"role": "user", "content": "Thanks."},
    ]


def test_tools_are_chat_functions_and_hosted_tools_are_left_out() -> None:
    """R9.1: function tools as they are, a custom tool as a function of one string, a namespace's tools by
    name, hosted tools ignored (never a 400); text.format, reasoning.effort and the cap carried over."""
    namespace = {"type": "namespace", "name": "agents", "description": "Sub-agents.", "tools": [NOW]}
    translation = _translate(
        input="hi",
        tools=[READ_FILE, APPLY_PATCH, {"type": "web_search", "external_web_access": True}, namespace],
        tool_choice={"type": "custom", "name": "apply_patch"},
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
        reasoning={"effort": "low", "summary": "auto"},
        max_output_tokens=64,
    )
    chat = translation.chat
    functions = {t.function.name: t.function for t in chat.tools or []}
    assert list(functions) == ["read_file", "apply_patch", "now"]
    assert functions["apply_patch"].parameters == {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The tool's whole input, as text."}},
        "required": ["input"],
        "additionalProperties": False,
    }
    assert "lark grammar:\nstart: /.+/" in (functions["apply_patch"].description or "")
    assert isinstance(chat.tool_choice, NamedToolChoice) and chat.tool_choice.model_dump() == {
        "type": "function",
        "function": {"name": "apply_patch"},
    }
    assert chat.response_format is not None and chat.response_format.type == "json_schema"
    assert chat.reasoning_effort == "low" and chat.max_completion_tokens == 64
    shape = chat.responses
    assert shape.custom_tools == {"apply_patch"} and shape.namespaces == {"now": "agents"}
    assert [t["type"] for t in shape.settings.tools] == ["function", "custom", "namespace"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"id": "msg_1"}]}, "input[0].type"),  # a reference may leave out its type
        (
            {"tools": [READ_FILE, {"type": "namespace", "name": "ns", "description": "", "tools": [READ_FILE]}]},
            "tools[1].tools[0].name",
        ),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
        ({"input": []}, "input"),
    ],
)
def test_what_needs_a_store_or_another_modality_is_a_400_naming_it(fields: dict[str, Any], param: str) -> None:
    """R9.4: nothing is stored, so stored state is refused by name; so are items this server cannot take."""
    refused = translate(ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields}))
    assert isinstance(refused, OpenAIError) and refused.status_code == 400 and refused.param == param, refused


def test_a_chat_error_names_the_field_the_client_sent() -> None:
    translation = _translate(input=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], tools=[NOW])
    renamed = translation.error(invalid_request("bad schema", param="tools[0].function.parameters.properties"))
    assert renamed.param == "tools[0].parameters.properties"
    assert translation.error(invalid_request("x", param="messages[1].content")).param == "input[1].content"
    assert translation.error(invalid_request("x", param="max_completion_tokens")).param == "max_output_tokens"
    schema = "response_format.json_schema.schema"
    assert translation.error(invalid_request("x", param=schema)).param == "text.format.schema"
    assert translation.error(invalid_request("x", param="tool_choice.function.name")).param == "tool_choice.name"
    allowed = "tool_choice.allowed_tools.tools[0].function.name"
    assert translation.error(invalid_request("x", param=allowed)).param == "tool_choice.tools[0].name"
    calls = _translate(
        input=[
            {"role": "user", "content": "a"},
            {"type": "function_call", "call_id": "c1", "name": "now", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "now", "arguments": "{"},
        ]
    )
    arguments = "messages[1].tool_calls[1].function.arguments"
    assert calls.error(invalid_request("x", param=arguments)).param == "input[2].arguments"


# --- answers over the HTTP surface ------------------------------------------------------------------


def test_a_text_answer_is_a_response_with_one_message(client: TestClient, tokenizer: Any) -> None:
    """R9.2: the `response` object, with the usage of the engine's counts and the request's settings."""
    body = _create(client, input="please count", instructions="Be brief.", metadata={"team": "core"})
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["status"] == "completed"
    assert (
        body["model"] == "replay-model" and body["instructions"] == "Be brief." and body["metadata"] == {"team": "core"}
    )
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    assert message["content"][0]["text"] == "one two three four five six seven eight nine ten"
    usage = body["usage"]
    assert usage["output_tokens"] == 10 and usage["total_tokens"] == usage["input_tokens"] + 10
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}


def test_a_streamed_text_answer_builds_the_same_response(client: TestClient) -> None:
    """R9.3: item added, part added, text deltas, text done, part done, item done, completed."""
    events = _stream(client, input="please count")
    kinds = [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(deltas) == "one two three four five six seven eight nine ten" and len(deltas) > 1
    final = _final(events)
    assert final["output"] == _items_done(events) and final["usage"]["output_tokens"] == 10
    whole = _create(client, input="please count")
    assert [i["content"] for i in whole["output"]] == [i["content"] for i in final["output"]]


def test_calls_are_function_call_items_streamed_and_whole(client: TestClient) -> None:
    """R9.2, R9.3: the words before the calls are a message; each call a `function_call` item whose streamed
    argument deltas add up to its arguments."""
    request = {"input": "read the file please", "tools": [READ_FILE, NOW]}
    events = _stream(client, **request)
    message, first, second = _items_done(events)
    assert message["content"][0]["text"] == "Let me read it."
    assert first["type"] == "function_call" and first["name"] == "read_file" and first["status"] == "completed"
    assert json.loads(first["arguments"]) == {"path": '/tmp/a "b".txt', "lines": [1, 20]}
    assert second["name"] == "now" and second["arguments"] == "{}" and first["call_id"] != second["call_id"]
    streamed = "".join(
        e["delta"]
        for e in events
        if e["type"] == "response.function_call_arguments.delta" and e["item_id"] == first["id"]
    )
    assert streamed == first["arguments"]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["name"], e["arguments"]) for e in done] == [("read_file", first["arguments"]), ("now", "{}")]
    whole = _create(client, **request)
    assert [(i["type"], i.get("name")) for i in whole["output"]] == [
        ("message", None),
        ("function_call", "read_file"),
        ("function_call", "now"),
    ]


def test_a_custom_tools_call_is_a_custom_tool_call_with_its_raw_input(client: TestClient) -> None:
    events = _stream(client, input="patch the file", tools=[APPLY_PATCH])
    [call] = _items_done(events)
    assert call["type"] == "custom_tool_call" and call["name"] == "apply_patch"
    assert call["input"] == "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"
    done = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
    assert [e["input"] for e in done] == [call["input"]]
    assert _create(client, input="patch the file", tools=[APPLY_PATCH])["output"][0]["input"] == call["input"]


def test_a_namespaced_functions_call_names_its_namespace(client: TestClient) -> None:
    namespace = {"type": "namespace", "name": "files", "description": "Files.", "tools": [READ_FILE, NOW]}
    body = _create(client, input="read the file please", tools=[namespace])
    assert [i.get("namespace") for i in body["output"]] == [None, "files", "files"]


def test_the_cap_makes_an_incomplete_response(client: TestClient) -> None:
    """R9.2: status `incomplete`, `incomplete_details.reason: max_output_tokens`, the partial text kept."""
    body = _create(client, input="tell a story", max_output_tokens=16)
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 16 and body["output"][0]["content"][0]["text"].startswith("Once upon")
    events = _stream(client, input="tell a story", max_output_tokens=16)
    assert events[-1]["type"] == "response.incomplete" and _final(events)["incomplete_details"] == {
        "reason": "max_output_tokens"
    }
    assert _items_done(events)[0]["status"] == "incomplete"


def test_json_schema_text_format_is_enforced_and_post_checked(client: TestClient) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    text = {"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}}
    body = _create(client, input="weather as json", text=text)
    assert json.loads(body["output"][0]["content"][0]["text"]) == {"city": "Paris", "days": 3}
    assert body["text"]["format"]["name"] == "weather"
    events = _stream(client, input="broken json", text=text)
    assert events[-1]["type"] == "response.failed" and _final(events)["error"]["code"] == "server_error"
    refused = client.post("/v1/responses", json={"model": "replay-model", "input": "broken json", "text": text})
    assert refused.status_code == 500 and "does not satisfy response_format" in refused.json()["error"]["message"]


def test_reasoning_is_a_reasoning_item_before_the_answer(tokenizer: Any) -> None:
    """R9.2, R9.3: a think model's reasoning as a `reasoning` item with `reasoning_text`, counted in usage."""
    client = _client(tokenizer, THINK_SCRIPT)
    events = _stream(client, input="what is 2+2?", reasoning={"effort": "high", "summary": "auto"})
    reasoning, message = _items_done(events)
    assert reasoning["type"] == "reasoning" and "That is 4." in reasoning["content"][0]["text"]
    assert message["content"][0]["text"] == "It is 4."
    assert "response.reasoning_text.delta" in [e["type"] for e in events]
    usage = _final(events)["usage"]
    assert 0 < usage["output_tokens_details"]["reasoning_tokens"] < usage["output_tokens"]
    whole = _create(client, input="read the file", tools=[READ_FILE])
    assert [i["type"] for i in whole["output"]] == ["reasoning", "function_call"]


def test_an_engine_failure_mid_stream_is_a_failed_response(client: TestClient) -> None:
    """R9.3: never a stream without its end: the engine's failure is `response.failed`, a server error."""
    events = _stream(client, input="break down")
    assert events[-1]["type"] == "response.failed" and _final(events)["error"]["code"] == "server_error"


def test_a_stream_broken_below_the_renderer_still_ends_with_a_failed_response(tokenizer: Any) -> None:
    client = _client(tokenizer, backend=BreakingBackend)
    events = _stream(client, input="please count")
    assert _final(events)["status"] == "failed" and _final(events)["id"].startswith("resp_")


def test_validation_errors_are_400_envelopes_naming_the_field(client: TestClient) -> None:
    """R9.4: as R5."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": "hi", "max_output_tokens": 8}, "max_output_tokens"),
        ({"input": "hi", "temperature": 3}, "temperature"),
        (
            {
                "input": "hi",
                "tools": [
                    {
                        "type": "function",
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}},
                        "strict": True,
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].parameters",
        ),
        ({"model": "nope", "input": "hi"}, "model"),
    ]
    for body, param in cases:
        response = client.post("/v1/responses", json={"model": "replay-model", **body})
        assert 400 <= response.status_code < 500, response.text
        assert_valid(response.json(), "ErrorResponse")
        assert (response.json()["error"]["param"] or "").startswith(param), response.text


# --- the OpenAI SDK -----------------------------------------------------------------------------------


def _sdk(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)


def test_the_sdk_creates_streams_and_parses_responses(client: TestClient) -> None:
    """R9: `responses.create`, `responses.stream` with its event helpers, `responses.parse` into a model."""
    sdk = _sdk(client)
    created = sdk.responses.create(model="replay-model", input="please count")
    assert created.output_text == "one two three four five six seven eight nine ten"
    tools: Any = [READ_FILE, NOW]
    with sdk.responses.stream(model="replay-model", input="read the file please", tools=tools) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert [i.type for i in final.output] == ["message", "function_call", "function_call"]

    class Weather(BaseModel):
        city: str
        days: int

    parsed = sdk.responses.parse(model="replay-model", input="weather as json", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", days=3)


def test_a_namespaced_custom_tools_call_names_its_namespace_and_a_hosted_choice_is_auto(client: TestClient) -> None:
    namespace = {"type": "namespace", "name": "edits", "description": "Edits.", "tools": [APPLY_PATCH]}
    body = _create(client, input="patch the file", tools=[namespace], tool_choice={"type": "mcp", "server_label": "x"})
    assert [(i["type"], i["namespace"]) for i in body["output"]] == [("custom_tool_call", "edits")]
    assert body["tool_choice"] == "auto"


def test_every_reasoning_effort_of_openais_is_accepted(client: TestClient) -> None:
    for effort in ("none", "minimal", "low", "medium", "high", "xhigh", "max"):
        assert _create(client, input="hi", reasoning={"effort": effort})["reasoning"]["effort"] == effort


def test_layout_between_items_is_dropped_however_the_engine_splits_it() -> None:
    """Whitespace after a call is not the next message's, whether it came alone or with the words after it."""
    shape = _translate(input="hi").chat.responses
    for pieces in (["\n\nDone."], ["\n\n", "Done."], ["\n", "\nDone", "."]):
        items = ItemWriter(shape, streaming=False)
        events: list[Event] = [ToolCallStart(0, "call_1", "now"), ToolCallArguments(0, "{}")]
        for event in events + [ContentDelta(piece) for piece in pieces]:
            items.on(event)
        items.finish("completed")
        call, message = items.done
        assert isinstance(message, OutputMessage) and message.content[0].text == "Done.", pieces


def test_a_failed_response_keeps_a_clients_mistake_under_its_own_code() -> None:
    """R9.3: `context_length_exceeded` found after the stream started stays that (Codex stops and says so);
    capacity and our faults are OpenAI's `rate_limit_exceeded` and `server_error` (clients retry)."""
    from serve_app.protocol.errors import server_error, unavailable
    from serve_app.responses_output import failure

    overflow = invalid_request("too long", param="input", code="context_length_exceeded")
    assert failure(overflow).code == "context_length_exceeded"
    assert failure(unavailable("busy", status_code=429)).code == "rate_limit_exceeded"
    assert failure(unavailable("lost")).code == failure(server_error("bug")).code == "server_error"
