"""Tool calling in the chat path: prompt side, parsed calls in responses and streams (R3.3, R3.4, R4.5, R4.6)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import pytest

from serve_app.chat_completions import ChatCompletions, PlannedChat
from serve_app.engines.replay import ReplayEngine
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.routing import needs_structured_output
from serve_app.structured_output import check_constraints
from serve_app.tool_constraints import forced_call_schema
from serve_app.tool_prompts import render_prompt
from tests.conftest import REPLAY_SCRIPT
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse, read_frames

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
    },
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
]
ASK = [{"role": "user", "content": "please read the file"}]


@pytest.fixture
def chat(tokenizer: Any) -> ChatCompletions:
    return ChatCompletions("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 4096, 0.0), tokenizer)


def _plan(chat: ChatCompletions, **fields: Any) -> PlannedChat:
    request = ChatCompletionRequest.model_validate({"model": "replay-model", "messages": ASK, "tools": TOOLS, **fields})
    planned = chat.plan(request)
    assert isinstance(planned, PlannedChat), planned
    return planned


def _json(result: bytes | OpenAIError) -> dict[str, Any]:
    """The JSON body of a whole (non-streamed) response, which must not be an error."""
    assert isinstance(result, bytes), result
    return cast(dict[str, Any], json.loads(result))


def test_tools_reach_a_template_without_tool_support(tokenizer: Any) -> None:
    """SmolLM2's template knows no tools: the built-in Hermes prompt lists them, history is written out."""
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "tools": TOOLS,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "read a.txt"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "hello"},
                {"role": "user", "content": "thanks"},
            ],
        }
    )
    prompt = render_prompt(tokenizer, request, with_tools=True)
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert json.dumps(TOOLS[0]) in prompt
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.txt"}}'
        "\n</tool_call><|im_end|>" in prompt
    )
    assert "<|im_start|>user\n<tool_response>\nhello\n</tool_response><|im_end|>" in prompt
    assert "# Tools" not in render_prompt(tokenizer, request, with_tools=False)


def test_non_streaming_tool_calls(chat: ChatCompletions) -> None:
    """R3.3/R3.4: calls with call_ ids and JSON-string arguments, content alongside, finish tool_calls."""
    body = _json(asyncio.run(chat.complete(_plan(chat))))
    assert_valid(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me read it."
    calls = choice["message"]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("read_file", {"path": '/tmp/a "b".txt', "lines": [1, 20]}),
        ("now", {}),
    ]
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("call_") for c in calls)


def test_streamed_tool_calls_match_the_non_streamed_ones(chat: ChatCompletions) -> None:
    """R4.5 shapes, and R4.6: concatenated fragments equal the non-streamed arguments byte for byte."""
    whole = _json(asyncio.run(chat.complete(_plan(chat))))["choices"][0]["message"]["tool_calls"]

    async def frames() -> bytes:
        return await read_frames(chat.stream(_plan(chat, stream=True)))

    chunks = parse_sse(asyncio.run(frames()))
    arguments: dict[int, str] = {}
    seen: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
        for call in chunk["choices"][0]["delta"].get("tool_calls", []):
            if call["index"] not in seen:
                assert call["id"].startswith("call_") and call["type"] == "function"
                assert call["function"]["name"] and call["function"]["arguments"] == ""
                seen[call["index"]] = call
            else:
                assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
            arguments[call["index"]] = arguments.get(call["index"], "") + call["function"]["arguments"]
    assert sorted(seen) == [0, 1]
    assert [arguments[i] for i in (0, 1)] == [c["function"]["arguments"] for c in whole]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["tool_calls"]


def test_without_tools_the_text_is_content(chat: ChatCompletions) -> None:
    planned = chat.plan(ChatCompletionRequest.model_validate({"model": "replay-model", "messages": ASK}))
    body = json.loads(asyncio.run(chat.complete(planned)))  # type: ignore[arg-type]
    assert "<tool_call>" in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_tool_choice_none_leaves_tools_out(chat: ChatCompletions) -> None:
    planned = _plan(chat, tool_choice="none")
    assert planned.meta.tool_parser is None


def test_forced_tool_choice_is_a_decoding_constraint(chat: ChatCompletions) -> None:
    """R7.3: `required` and named functions become a JSON-schema constraint on the engine's output."""
    named = _plan(chat, tool_choice={"type": "function", "function": {"name": "read_file"}})
    schema = named.generation.sampling.json_schema
    assert schema is not None and schema["properties"]["name"] == {"const": "read_file"}
    assert schema["properties"]["arguments"] == {"$ref": "#/$defs/call_0"}
    assert schema["$defs"]["call_0"] == TOOLS[0]["function"]["parameters"]
    required = _plan(chat, tool_choice="required").generation.sampling.json_schema
    assert required is not None and [c["properties"]["name"]["const"] for c in required["anyOf"]] == [
        "read_file",
        "now",
    ]
    assert _plan(chat, tool_choice="auto").generation.sampling.json_schema is None


def test_parallel_tool_calls_false_stops_after_the_first_call(chat: ChatCompletions) -> None:
    planned = _plan(chat, parallel_tool_calls=False)
    assert "</tool_call>" in planned.generation.sampling.stop
    body = _json(asyncio.run(chat.complete(planned)))
    assert [c["function"]["name"] for c in body["choices"][0]["message"]["tool_calls"]] == ["read_file"]


def test_forced_call_schema_for_a_named_function() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": ASK,
            "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "now"}},
        }
    )
    schema = forced_call_schema(request)
    assert schema == {
        "$defs": {"call_0": {"type": "object", "properties": {}}},
        "type": "object",
        "properties": {"name": {"const": "now"}, "arguments": {"$ref": "#/$defs/call_0"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def test_strict_tools_under_auto_get_a_structural_tag(chat: ChatCompletions) -> None:
    """R7.3: with a `strict: true` tool the engine gets a structural tag for the model's format; else none."""
    strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}, TOOLS[1]]
    structural_tag = _plan(chat, tools=strict).generation.sampling.structural_tag
    assert structural_tag is not None
    tag = json.loads(structural_tag)
    assert tag["format"]["triggers"] == ["<tool_call>"]
    assert _plan(chat).generation.sampling.structural_tag is None  # no strict tool: the model is free


def test_strict_tools_in_a_format_without_a_grammar_are_refused() -> None:
    from serve_app.tool_constraints import strict_tools_tag

    strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}]
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": ASK, "tools": strict})
    for parser in ("mistral", "pythonic"):
        error = strict_tools_tag(request, parser)
        assert isinstance(error, OpenAIError) and error.status_code == 400 and parser in error.message
    assert isinstance(strict_tools_tag(request, "llama3_json"), str)


def test_a_template_without_tools_is_prompted_and_parsed_as_hermes(tokenizer: Any) -> None:
    """Whatever format the model is configured with, our built-in tool prompt asks for Hermes calls."""
    chat = ChatCompletions("m", ReplayEngine(tokenizer, REPLAY_SCRIPT, 4096, 0.0), tokenizer, tool_parser="mistral")
    strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}]
    planned = chat.plan(ChatCompletionRequest.model_validate({"model": "m", "messages": ASK, "tools": strict}))
    assert isinstance(planned, PlannedChat) and planned.meta.tool_parser == "hermes"


@pytest.mark.parametrize(
    ("keyword", "schema"),
    [
        ("not", {"type": "object", "properties": {"a": {"not": {"type": "null"}}}}),
        ("if", {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}),
        ("allOf", {"allOf": [{"type": "object"}, {"required": ["a"]}]}),
        ("patternProperties", {"type": "object", "patternProperties": {"^x": {"type": "string"}}}),
        ("uniqueItems", {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}),
        ("multipleOf", {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 0.5}}}),
        ("format", {"type": "object", "properties": {"c": {"type": "string", "format": "color"}}}),
        ("dependentRequired", {"type": "object", "dependentRequired": {"a": ["b"]}}),
        ("contains", {"type": "object", "properties": {"a": {"type": "array", "contains": {"const": 1}}}}),
    ],
)
def test_unenforceable_schemas_are_a_400_naming_the_keyword(
    chat: ChatCompletions, keyword: str, schema: dict[str, Any]
) -> None:
    """R7.2/R7.3: before generation, for forced choices and strict tools; free `auto` calls are not checked."""
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    for fields in (
        {"tool_choice": "required"},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema, "strict": True}}]},
    ):
        request = ChatCompletionRequest.model_validate({"model": "m", "messages": ASK, "tools": [tool], **fields})
        assert needs_structured_output(request)  # the stage that checks it before generation
        error = check_constraints(request)
        assert isinstance(error, OpenAIError)
        assert error.status_code == 400 and error.param == "tools[0].function.parameters"
        assert f"'{keyword}'" in error.message
    auto = ChatCompletionRequest.model_validate({"model": "m", "messages": ASK, "tools": [tool]})
    assert not needs_structured_output(auto) and check_constraints(auto) is None


def test_r7_3_a_tool_schema_the_grammar_cannot_compile_is_a_400() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/missing"}}}
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": ASK, "tools": [tool], "tool_choice": "required"}
    )
    error = check_constraints(request)
    assert isinstance(error, OpenAIError) and error.status_code == 400 and "cannot be compiled" in error.message


def test_strict_tag_grammar_admits_text_and_valid_calls_only() -> None:
    """The structural tag, compiled by the engine's own grammar backend (xgrammar): free text and valid
    calls pass; a strict tool's invalid arguments and undeclared tools cannot be generated."""
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string

    from serve_app.tool_constraints import strict_tools_tag

    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}, "days": {"type": "integer"}},
                "required": ["city", "days"],
                "additionalProperties": False,
            },
        },
    }
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": ASK, "tools": [weather, TOOLS[1]]})
    tag = strict_tools_tag(request, "hermes")
    assert isinstance(tag, str)
    grammar = xgr.Grammar.from_structural_tag(tag)

    def call(name: str, arguments: str) -> str:
        return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'

    assert _is_grammar_accept_string(grammar, "Sure.\n" + call("get_weather", '{"city": "Paris", "days": 3}'))
    assert _is_grammar_accept_string(grammar, "A plain answer.")
    assert _is_grammar_accept_string(grammar, call("now", '{"any": [1]}'))  # non-strict: any object
    assert not _is_grammar_accept_string(grammar, call("get_weather", '{"city": "Rome", "days": 3}'))
    assert not _is_grammar_accept_string(grammar, call("get_weather", '{"city": "Paris"}'))
    assert not _is_grammar_accept_string(grammar, call("delete_all", "{}"))
