"""The prompt side of tool calling: tools and tool-call history into the model's prompt.

Templates that know tools (Qwen, Llama 3.1+, Mistral, ...) get them through `apply_chat_template(tools=)`.
Templates that do not (SmolLM2's ChatML) get a built-in Hermes-style tool prompt, so any model can call
tools; assistant turns that called tools and tool results are rendered in the same format.
"""

from __future__ import annotations

import json
from typing import Any, cast

from serve_app.protocol.chat import AssistantMessage, ChatCompletionRequest, ChatMessage, ToolMessage
from serve_app.protocol.tools import FunctionDefinition, FunctionTool, ToolCallParam
from serve_app.tool_constraints import callable_functions

HERMES_SYSTEM = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def template_supports_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in template


def render_prompt(
    tokenizer: Any, request: ChatCompletionRequest, with_tools: bool, template_kwargs: dict[str, Any] | None = None
) -> str:
    """The prompt text for `request`: native tool support when the template has it, else our Hermes prompt.
    `template_kwargs` are the template's own switches (such as reasoning on/off)."""
    # Only what the model may call (an `allowed_tools` choice narrows `tools`), as OpenAI's tool objects.
    tools = [_tool_object(f) for f in callable_functions(request)] if with_tools else None
    kwargs = template_kwargs or {}
    if tools and template_supports_tools(tokenizer):
        messages = [_native_message(m) for m in request.messages]
        return cast(
            str,
            tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs),
        )
    messages = [_hermes_message(m) for m in request.messages]
    if tools:
        system = HERMES_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + system}
        else:
            messages.insert(0, {"role": "system", "content": system})
    return cast(str, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs))


def _role(message: ChatMessage) -> str:
    return "system" if message.role == "developer" else message.role


def _tool_object(function: FunctionDefinition) -> dict[str, Any]:
    return FunctionTool(type="function", function=function).model_dump(exclude_none=True)


def _calls(message: ChatMessage) -> list[ToolCallParam]:
    return (message.tool_calls or []) if isinstance(message, AssistantMessage) else []


def _native_message(message: ChatMessage) -> dict[str, Any]:
    """Templates with tool support read `tool_calls` (arguments as objects) and `tool_call_id` themselves."""
    rendered: dict[str, Any] = {"role": _role(message), "content": message.text()}
    if calls := _calls(message):
        rendered["tool_calls"] = [_call_with_object_arguments(c) for c in calls]
    if isinstance(message, ToolMessage):
        rendered["tool_call_id"] = message.tool_call_id
    if message.name:
        rendered["name"] = message.name
    return rendered


def _hermes_message(message: ChatMessage) -> dict[str, Any]:
    """Tool calls and results written out as the Hermes format the model is asked to produce."""
    if message.role in ("tool", "function"):
        return {"role": "user", "content": f"<tool_response>\n{message.text()}\n</tool_response>"}
    text = message.text()
    for call in _calls(message):
        body = {"name": call.function.name, "arguments": _arguments_object(call.function.arguments)}
        text += f"\n<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"
    return {"role": _role(message), "content": text.strip("\n") if not message.text() else text}


def _call_with_object_arguments(call: ToolCallParam) -> dict[str, Any]:
    rendered = call.model_dump()
    rendered["function"]["arguments"] = _arguments_object(call.function.arguments)
    return rendered


def _arguments_object(arguments: str) -> Any:
    """The arguments as an object, as templates expect; text that is not JSON stays text."""
    try:
        return json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return arguments
