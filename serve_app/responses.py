"""`/v1/responses` served as chat (R9): a Responses request is translated at the ingress into the chat
request that the rest of the pipeline serves (prompt rendering, tool parsing, constraints, reasoning,
engines), carrying what the answer's Responses shape needs (`ResponsesShape`). The answer is rendered in
that shape by `serve_app/responses_output.py`, from the same parser events as chat.

- `instructions` and `system`/`developer` messages become system messages; an assistant's message,
  reasoning and calls sent back as items become one assistant message with `tool_calls`; call outputs
  become tool messages.
- Function tools are chat's function tools; a `custom` (freeform) tool is a function with one string
  argument, `input`, and its calls are answered as `custom_tool_call` items; a `namespace`'s tools are
  offered by name and their calls name the namespace. Hosted tools (`web_search`, ...) cannot run here:
  they are left out, with a log line, never refused.
- `text.format` is chat's `response_format`, `reasoning.effort` its `reasoning_effort`, `max_output_tokens`
  its `max_completion_tokens`.
- Nothing is stored (`store` is accepted): state kept on OpenAI's side (`previous_response_id`,
  `conversation`, `background`, stored `prompt`s) is a 400 naming the field.

A chat error names a chat field; `Translation.error` renames it to the Responses field it came from.

Pure logic (no Ray).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from serve_app.protocol.errors import OpenAIError, invalid_request, param_path
from serve_app.protocol.responses import (
    AllowedToolsChoice,
    ChatFromResponses,
    CustomToolCallItem,
    CustomToolParam,
    FunctionCallItem,
    FunctionToolParam,
    HostedChoice,
    HostedToolParam,
    InputPart,
    MediaInputPart,
    MessageItem,
    NamedChoice,
    NamespaceToolParam,
    ReasoningItem,
    ResponseSettings,
    ResponsesRequest,
    ResponsesShape,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    TextInputPart,
    ToolOutputItem,
)

logger = logging.getLogger("agent_serve.responses")

CUSTOM_TOOL_ARGUMENT = "input"
"""The one argument of the function a custom (freeform) tool is offered as."""

_STORED_STATE = {
    "previous_response_id": "send the whole conversation in `input` instead (Codex does)",
    "conversation": "send the whole conversation in `input` instead",
    "background": "send the request without `background` and keep the connection open",
    "prompt": "send the prompt's text in `instructions` and `input` instead",
}


@dataclass
class Translation:
    """A Responses request as the chat request that serves it, and how to name chat fields in errors."""

    request: ResponsesRequest
    chat: ChatFromResponses
    # Chat field path prefix -> the Responses field it came from (longest prefix wins).
    params: dict[str, str] = field(default_factory=dict)

    def error(self, error: OpenAIError) -> OpenAIError:
        """`error` with its `param` named as the client sent it."""
        return _renamed(error, self.params)


def _renamed(error: OpenAIError, params: dict[str, str]) -> OpenAIError:
    param = error.param
    if param is None:
        return error
    best = max((prefix for prefix in params if _within(param, prefix)), key=len, default=None)
    if best is None:
        return error
    renamed = params[best] + param[len(best) :].replace(".function", "", 1)
    return dataclasses.replace(error, message=error.message.replace(param, renamed), param=renamed)


def _within(param: str, prefix: str) -> bool:
    return param == prefix or param.startswith((prefix + ".", prefix + "["))


def translate(request: ResponsesRequest) -> Translation | OpenAIError:
    for name, instead in _STORED_STATE.items():
        if getattr(request, name) not in (None, False):
            return invalid_request(
                f"This server keeps no responses or conversations, so it cannot take `{name}`: {instead}.",
                param=name,
            )
    params: dict[str, str] = {
        "max_completion_tokens": "max_output_tokens",
        "response_format": "text.format",
        "response_format.json_schema": "text.format",
        "reasoning_effort": "reasoning.effort",
        "tool_choice": "tool_choice",
        "tool_choice.allowed_tools": "tool_choice",
        "messages": "input",
    }
    messages = _messages(request, params)
    if isinstance(messages, OpenAIError):
        return messages
    tools = _tools(request, params)
    if isinstance(tools, OpenAIError):
        return tools
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "stream": bool(request.stream),
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
        "user": request.user,
        "prompt_cache_key": request.prompt_cache_key,  # the conversation's routing key (prefix_routing.py)
    }
    if tools.chat:
        body["tools"] = tools.chat
        body["tool_choice"] = _tool_choice(request)
    if (response_format := _response_format(request)) is not None:
        body["response_format"] = response_format
    if request.reasoning is not None and request.reasoning.effort is not None:
        body["reasoning_effort"] = request.reasoning.effort
    shape = ResponsesShape(
        settings=_settings(request, tools.echoed), custom_tools=frozenset(tools.custom), namespaces=tools.namespaces
    )
    try:
        chat = ChatFromResponses.model_validate({**body, "responses": shape}, strict=False)
    except ValidationError as exc:  # what the chat request refuses that the Responses shapes let through
        first = exc.errors()[0]
        param = param_path(first["loc"])
        return _renamed(invalid_request(f"Invalid request: {param or 'body'}: {first['msg']}", param=param), params)
    return Translation(request, chat, params)


def _messages(request: ResponsesRequest, params: dict[str, str]) -> list[dict[str, Any]] | OpenAIError:
    """The conversation as chat messages; `params` learns which input item each message came from."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
        params["messages[0]"] = "instructions"
    if isinstance(request.input, str):
        params[f"messages[{len(messages)}]"] = "input"
        messages.append({"role": "user", "content": request.input})
        return messages
    turn: dict[str, Any] | None = None  # the assistant message being gathered from items

    def assistant(index: int) -> dict[str, Any]:
        nonlocal turn
        if turn is None:
            turn = {"role": "assistant", "content": None}
            params[f"messages[{len(messages)}]"] = f"input[{index}]"
            messages.append(turn)
        return turn

    def joined(before: str | None, text: str) -> str:  # separate items are separate paragraphs
        return f"{before}\n\n{text}" if before else text

    for index, item in enumerate(request.input):
        where = f"input[{index}]"
        if isinstance(item, MessageItem) and item.role == "assistant":
            text = _text(item.content, f"{where}.content")
            if isinstance(text, OpenAIError):
                return text
            if turn is not None and turn.get("tool_calls"):
                turn = None  # words after calls start the next assistant message
            gathered = assistant(index)
            gathered["content"] = joined(gathered["content"], text)
        elif isinstance(item, ReasoningItem):
            if turn is not None and (turn["content"] or turn.get("tool_calls")):
                turn = None
            parts = item.content or item.summary  # the reasoning itself, or what is left of it
            gathered = assistant(index)
            gathered["reasoning_content"] = joined(gathered.get("reasoning_content"), "".join(p.text for p in parts))
        elif isinstance(item, FunctionCallItem | CustomToolCallItem):
            arguments = (
                item.arguments
                if isinstance(item, FunctionCallItem)
                else json.dumps({CUSTOM_TOOL_ARGUMENT: item.input}, ensure_ascii=False)
            )
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": arguments}}
            calls = assistant(index).setdefault("tool_calls", [])
            params[f"messages[{len(messages) - 1}].tool_calls[{len(calls)}]"] = where
            calls.append(call)
        elif isinstance(item, ToolOutputItem):
            turn = None
            output = _text(item.output, f"{where}.output")
            if isinstance(output, OpenAIError):
                return output
            params[f"messages[{len(messages)}]"] = where
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        elif isinstance(item, MessageItem):
            turn = None
            text = _text(item.content, f"{where}.content")
            if isinstance(text, OpenAIError):
                return text
            params[f"messages[{len(messages)}]"] = where
            messages.append({"role": item.role, "content": text})
        else:
            return invalid_request(
                f"{where} is a '{item.type}' item, which this server cannot take: it takes message, function_call, "
                "function_call_output, custom_tool_call, custom_tool_call_output and reasoning items, and keeps no "
                "items to refer to.",
                param=f"{where}.type",
            )
    if not messages:
        return invalid_request("input has no items: send at least one message.", param="input")
    return messages


def _text(content: str | list[InputPart], where: str) -> str | OpenAIError:
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if isinstance(part, MediaInputPart):
            return invalid_request(
                f"The models of this server accept text only; {where}[{index}] is an '{part.type}' part. "
                "Send text parts.",
                param=f"{where}[{index}]",
            )
        texts.append(part.text if isinstance(part, TextInputPart) else part.refusal)
    return "".join(texts)


@dataclass
class _Tools:
    chat: list[dict[str, Any]] = field(default_factory=list)  # chat's function tools
    echoed: list[dict[str, Any]] = field(default_factory=list)  # the tools as the response reports them
    custom: set[str] = field(default_factory=set)  # functions that stand for custom tools
    namespaces: dict[str, str] = field(default_factory=dict)  # the namespace of each namespaced function


def _tools(request: ResponsesRequest, params: dict[str, str]) -> _Tools | OpenAIError:
    """The request's tools as chat's function tools. Every tool is offered to the model by its name alone, so
    names must be unique across namespaces and kinds."""
    tools = _Tools()
    offered: set[str] = set()

    def offer(tool: FunctionToolParam | CustomToolParam, where: str) -> dict[str, Any] | OpenAIError:
        if tool.name in offered:
            return invalid_request(
                f"{where} is named {tool.name!r}, as another tool is; tool names must be unique, namespaces included.",
                param=f"{where}.name",
            )
        offered.add(tool.name)
        params[f"tools[{len(tools.chat)}]"] = where
        if isinstance(tool, CustomToolParam):
            tools.custom.add(tool.name)
            tools.chat.append({"type": "function", "function": _custom_as_function(tool)})
            return tool.model_dump(exclude_none=True)
        function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
        tools.chat.append({"type": "function", "function": function | {"strict": tool.strict}})
        return {"type": "function", **function, "strict": tool.strict}

    for index, tool in enumerate(request.tools or []):
        if isinstance(tool, HostedToolParam):
            logger.info("ignoring a '%s' tool: it runs on OpenAI's side, and this server cannot run it", tool.type)
            continue
        if isinstance(tool, NamespaceToolParam):
            inner = [offer(t, f"tools[{index}].tools[{j}]") for j, t in enumerate(tool.tools)]
            if (refused := next((t for t in inner if isinstance(t, OpenAIError)), None)) is not None:
                return refused
            tools.namespaces.update((t.name, tool.name) for t in tool.tools)
            description = tool.description or ""
            tools.echoed.append({"type": "namespace", "name": tool.name, "description": description, "tools": inner})
            continue
        echoed = offer(tool, f"tools[{index}]")
        if isinstance(echoed, OpenAIError):
            return echoed
        tools.echoed.append(echoed)
    return tools


def _custom_as_function(tool: CustomToolParam) -> dict[str, Any]:
    described = tool.description or f"The {tool.name} tool."
    grammar = tool.format or {}
    if grammar.get("type") == "grammar":  # told to the model; the text is not constrained to it
        syntax, definition = grammar.get("syntax"), grammar.get("definition")
        described += f"\nWrite `{CUSTOM_TOOL_ARGUMENT}` in this {syntax} grammar:\n{definition}"
    return {
        "name": tool.name,
        "description": described,
        "parameters": {
            "type": "object",
            "properties": {CUSTOM_TOOL_ARGUMENT: {"type": "string", "description": "The tool's whole input, as text."}},
            "required": [CUSTOM_TOOL_ARGUMENT],
            "additionalProperties": False,
        },
    }


def _tool_choice(request: ResponsesRequest) -> Any:
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, NamedChoice):
        return {"type": "function", "function": {"name": choice.name}}
    if isinstance(choice, AllowedToolsChoice):
        named = [t["name"] for t in choice.tools if t.get("type") in ("function", "custom") and t.get("name")]
        if not named:
            return choice.mode
        tools = [{"type": "function", "function": {"name": name}} for name in named]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.mode, "tools": tools}}
    logger.info("a tool_choice of a '%s' tool, which runs on OpenAI's side: served as 'auto'", choice.type)
    return "auto"


def _tool_choice_echoed(request: ResponsesRequest) -> str | dict[str, Any]:
    """The choice as it was served: one of a hosted tool was `auto`."""
    choice = request.tool_choice
    if choice is None or isinstance(choice, HostedChoice):
        return "auto"
    return choice if isinstance(choice, str) else choice.model_dump()


def _response_format(request: ResponsesRequest) -> dict[str, Any] | None:
    text_format = request.text.format if request.text is not None else None
    if isinstance(text_format, TextFormatJsonObject):
        return {"type": "json_object"}
    if isinstance(text_format, TextFormatJsonSchema):
        schema = {"name": text_format.name, "schema": text_format.schema_, "strict": text_format.strict}
        if text_format.description is not None:
            schema["description"] = text_format.description
        return {"type": "json_schema", "json_schema": schema}
    return None


def _settings(request: ResponsesRequest, tools: list[dict[str, Any]]) -> ResponseSettings:
    text_format = request.text.format if request.text is not None else None
    reasoning = request.reasoning
    return ResponseSettings(
        instructions=request.instructions,
        tools=tools,
        tool_choice=_tool_choice_echoed(request),
        parallel_tool_calls=request.parallel_tool_calls is not False,
        metadata=request.metadata or {},
        temperature=request.temperature,
        top_p=request.top_p,
        max_output_tokens=request.max_output_tokens,
        max_tool_calls=request.max_tool_calls,
        reasoning={"effort": reasoning.effort, "summary": reasoning.summary} if reasoning else {},
        text={
            "format": text_format.model_dump(by_alias=True, exclude_none=True) if text_format else {"type": "text"},
            "verbosity": (request.text.verbosity if request.text else None) or "medium",
        },
        truncation=request.truncation or "disabled",
        service_tier="default",
        top_logprobs=request.top_logprobs or 0,
        prompt_cache_key=request.prompt_cache_key,
        safety_identifier=request.safety_identifier,
        user=request.user,
    )
