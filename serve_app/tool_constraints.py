"""Tool calls enforced while decoding (R7.3): what the engine's grammar must allow for a request's tools.

- `tool_choice: "required"` or a named function: the whole answer is one call object of an allowed
  function, `{"name": ..., "arguments": <its parameters schema>}` (read back by the JSON-call parser).
- Tools declared `strict: true` under `auto`: the model writes freely until it opens a call in its
  format; from there the call must be one of the tools, strict ones with schema-valid arguments. The
  grammar comes from xgrammar's built-in structural tags for each model format.
"""

from __future__ import annotations

from typing import Any, cast

from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError, invalid_request
from serve_app.protocol.tools import ANY_OBJECT, AllowedToolsChoice, FunctionDefinition, NamedToolChoice
from serve_app.schema_support import for_grammar, relocated


def _functions(request: ChatCompletionRequest) -> list[FunctionDefinition]:
    return [tool.function for tool in request.tools or []]


def _forced(request: ChatCompletionRequest) -> bool:
    choice = request.tool_choice
    return (
        choice == "required"
        or isinstance(choice, NamedToolChoice)
        or (isinstance(choice, AllowedToolsChoice) and choice.allowed_tools.mode == "required")
    )


def callable_functions(request: ChatCompletionRequest) -> list[FunctionDefinition]:
    """The functions the model may call: all of `tools`, or those a named or `allowed_tools` choice lets it."""
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        allowed = {choice.function.name}
    elif isinstance(choice, AllowedToolsChoice):
        allowed = {tool.function.name for tool in choice.allowed_tools.tools}
    else:
        return _functions(request)
    return [f for f in _functions(request) if f.name in allowed]


def tools_enforced(request: ChatCompletionRequest) -> bool:
    """Calls must follow their schemas: a forced choice, or any tool declared strict."""
    return _forced(request) or any(f.strict for f in _functions(request))


def enforced_schemas(request: ChatCompletionRequest) -> list[tuple[str, str, dict[str, Any]]]:
    """(param, function name, schema) of every tool schema the grammar must enforce for this request."""
    forced = _forced(request)
    return [
        (f"tools[{i}].function.parameters", function.name, function.schema_or_any)
        for i, function in enumerate(_functions(request))
        if forced or function.strict
    ]


def forced_call_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    """The JSON a forced tool choice must produce: one `{"name", "arguments"}` object of an allowed tool.

    Each tool's parameters go under `$defs` of the wrapping schema, their local references rewritten to
    point there: a `"$ref": "#/$defs/user"` written for the parameters' own root (as pydantic, the Agents
    SDK and LangChain write nested models) would otherwise point at the wrapper's root and not resolve."""
    if not _forced(request):
        return None
    functions = callable_functions(request)
    definitions = {
        f"call_{i}": relocated(for_grammar(f.schema_or_any), f"#/$defs/call_{i}") for i, f in enumerate(functions)
    }
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, "arguments": {"$ref": f"#/$defs/call_{i}"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for i, f in enumerate(functions)
    ]
    return {"$defs": definitions} | (calls[0] if len(calls) == 1 else {"anyOf": calls})


# Our tool-call formats -> xgrammar's built-in structural tags for the same syntax.
XGRAMMAR_FORMATS = {"hermes": "qwen_3", "llama3_json": "llama", "qwen3_coder": "qwen_3_coder", "harmony": "harmony"}


def strict_tools_tag(
    request: ChatCompletionRequest, tool_parser: str, reasoning: bool = False, compact: bool = True
) -> str | OpenAIError | None:
    """A structural tag (xgrammar JSON, for vLLM) holding calls to the declared tools once the model opens
    one, when any tool is strict. Non-strict tools stay allowed, as well-formed JSON objects. Models that
    reason get their reasoning block allowed before the calls. `compact`: at most one whitespace character
    at a time inside the arguments (structural tags have no whitespace-free mode)."""
    functions = callable_functions(request)
    if not any(f.strict for f in functions):
        return None
    if tool_parser not in XGRAMMAR_FORMATS:
        return invalid_request(
            f"Tools with strict: true cannot be enforced under tool_choice 'auto' for this model's tool format "
            f"'{tool_parser}'. Use tool_choice 'required' or a named function (enforced for every format), or "
            f"drop strict.",
            param="tools",
        )
    import xgrammar

    tools = [
        {
            "type": "function",
            "function": {"name": f.name, "parameters": for_grammar(f.schema_or_any) if f.strict else ANY_OBJECT},
        }
        for f in functions
    ]
    tag = xgrammar.get_model_structural_tag(
        XGRAMMAR_FORMATS[tool_parser],
        tools=tools,
        tool_choice="auto",
        reasoning="enabled" if reasoning else "disabled",
        max_whitespace_cnt=1 if compact else None,
    )
    return cast(str, tag.model_dump_json())
