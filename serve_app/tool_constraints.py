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

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _functions(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [t.get("function") or {} for t in request.tools or []]


def tools_enforced(request: ChatCompletionRequest) -> bool:
    """Calls must follow their schemas: a forced choice, or any tool declared strict."""
    forced = request.tool_choice == "required" or isinstance(request.tool_choice, dict)
    return forced or any(f.get("strict") for f in _functions(request))


def enforced_schemas(request: ChatCompletionRequest) -> list[tuple[str, str, dict[str, Any]]]:
    """(param, function name, schema) of every tool schema the grammar must enforce for this request."""
    forced = forced_call_schema(request) is not None
    return [
        (f"tools[{i}].function.parameters", str(function.get("name")), function.get("parameters") or ANY_OBJECT)
        for i, function in enumerate(_functions(request))
        if forced or function.get("strict")
    ]


def forced_call_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    """The JSON a forced tool choice must produce: one `{"name", "arguments"}` object of an allowed tool."""
    choice = request.tool_choice
    functions = _functions(request)
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        functions = [f for f in functions if f.get("name") == wanted]
    elif choice != "required":
        return None
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, "arguments": f.get("parameters") or ANY_OBJECT},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


# Our tool-call formats -> xgrammar's built-in structural tags for the same syntax.
XGRAMMAR_FORMATS = {"hermes": "qwen_3", "llama3_json": "llama", "qwen3_coder": "qwen_3_coder", "harmony": "harmony"}


def strict_tools_tag(
    request: ChatCompletionRequest, tool_parser: str, reasoning: bool = False
) -> str | OpenAIError | None:
    """A structural tag (xgrammar JSON, for vLLM) holding calls to the declared tools once the model opens
    one, when any tool is strict. Non-strict tools stay allowed, as well-formed JSON objects. Models that
    reason get their reasoning block allowed before the calls."""
    functions = _functions(request)
    if not any(f.get("strict") for f in functions):
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
            "function": {
                "name": f["name"],
                "parameters": (f.get("parameters") or ANY_OBJECT) if f.get("strict") else ANY_OBJECT,
            },
        }
        for f in functions
    ]
    tag = xgrammar.get_model_structural_tag(
        XGRAMMAR_FORMATS[tool_parser], tools=tools, tool_choice="auto", reasoning="enabled" if reasoning else "disabled"
    )
    return cast(str, tag.model_dump_json())
