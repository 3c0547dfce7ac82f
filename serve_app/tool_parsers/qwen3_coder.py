"""Qwen3-Coder's XML tool calls:

    text <tool_call>
    <function=write_file>
    <parameter=path>
    a.py
    </parameter>
    <parameter=overwrite>
    true
    </parameter>
    </function>
    </tool_call>

Values are raw text, typed by the tool's JSON schema: string parameters stream as they arrive (a file's
contents need not wait for its end); other types are parsed as JSON once complete, falling back to text.
"""

from __future__ import annotations

import json
from typing import Any

from serve_app.protocol.tools import FunctionDefinition
from serve_app.tool_parsers.base import (
    ContentDelta,
    Event,
    MarkupModeParser,
    ToolCallArguments,
    coalesce,
    held_prefix_length,
    register,
)

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
FUNCTION_OPEN, FUNCTION_CLOSE = "<function=", "</function>"
PARAMETER_OPEN, PARAMETER_CLOSE = "<parameter=", "</parameter>"


@register("qwen3_coder")
class Qwen3CoderToolParser(MarkupModeParser):
    # Modes: text, function, parameters, value, close.
    OPENING, AFTER_OPENING = CALL_OPEN, "function"

    def __init__(self, tools: list[FunctionDefinition] | None = None) -> None:
        super().__init__(tools)
        self._types = {function.name: _property_types(function.schema_or_any) for function in self.tools}
        self._name = ""
        self._key = ""
        self._sent = 0  # parameters sent for the current call
        self._streaming_string = False
        self._fresh_value = False  # the value's first newline (after `>`) is markup, not text

    def finish(self) -> list[Event]:
        # A cut-off call still gets well-formed arguments where the text allows it.
        index = self.calls_started - 1
        events: list[Event] = []
        if self._mode == "function":
            events.append(ContentDelta(self._read))
        elif self._mode == "value" and self._streaming_string:
            events.append(
                ToolCallArguments(
                    index, _escaped(self._pending.removeprefix("\n") if self._fresh_value else self._pending) + '"}'
                )
            )
        elif self._mode == "value":
            events.append(
                ToolCallArguments(index, self._opening() + json.dumps(_typed(self._pending), ensure_ascii=False) + "}")
            )
        elif self._mode == "parameters":
            events.append(ToolCallArguments(index, "}" if self._sent else "{}"))
        events.append(ContentDelta(self._pending if self._mode in ("text", "function") else ""))
        self._pending, self._mode = "", "text"
        return coalesce(events)

    def _in_function(self) -> list[Event] | None:
        stripped = self._pending.lstrip()
        if len(stripped) < len(FUNCTION_OPEN) and FUNCTION_OPEN.startswith(stripped):
            return None
        end = stripped.find(">")
        if not stripped.startswith(FUNCTION_OPEN) or (end < 0 and "\n" in stripped):
            return self._not_a_call()
        if end < 0:
            return None
        name = stripped[len(FUNCTION_OPEN) : end].strip()
        if not name:
            return self._not_a_call()
        self._pending, self._mode, self._name, self._sent, self._read = stripped[end + 1 :], "parameters", name, 0, ""
        return [self._start_call(name)]

    def _not_a_call(self) -> list[Event]:
        events: list[Event] = [ContentDelta(self._read)]
        self._mode, self._read = "text", ""
        return events

    def _in_parameters(self) -> list[Event] | None:
        stripped = self._pending.lstrip()
        index = self.calls_started - 1
        for marker in (PARAMETER_OPEN, FUNCTION_CLOSE):
            if len(stripped) < len(marker) and marker.startswith(stripped):
                return None
        if stripped.startswith(FUNCTION_CLOSE):
            self._pending, self._mode = stripped[len(FUNCTION_CLOSE) :], "close"
            return [ToolCallArguments(index, "}" if self._sent else "{}")]
        if stripped.startswith(PARAMETER_OPEN):
            end = stripped.find(">")
            if end < 0:
                return None
            self._key = stripped[len(PARAMETER_OPEN) : end].strip()
            self._pending, self._mode, self._fresh_value = stripped[end + 1 :], "value", True
            self._streaming_string = self._types.get(self._name, {}).get(self._key) == "string"
            if self._streaming_string:
                return [ToolCallArguments(index, self._opening() + '"')]
            return []
        self._mode = "text"  # the call's markup ended early: the rest is text
        return [ToolCallArguments(index, "}" if self._sent else "{}")]

    def _opening(self) -> str:
        opening = ("{" if not self._sent else ", ") + json.dumps(self._key) + ": "
        self._sent += 1
        return opening

    def _in_value(self) -> list[Event] | None:
        index = self.calls_started - 1
        if self._fresh_value:
            self._pending, self._fresh_value = self._pending.removeprefix("\n"), False
            if not self._pending:
                return None
        end = self._pending.find(PARAMETER_CLOSE)
        if end < 0:
            if not self._streaming_string:
                return None
            keep = held_prefix_length(self._pending, "\n" + PARAMETER_CLOSE)
            if self._pending.endswith("\n"):
                keep = max(keep, 1)
            ready, self._pending = (
                self._pending[: len(self._pending) - keep],
                self._pending[len(self._pending) - keep :],
            )
            return [ToolCallArguments(index, _escaped(ready))] if ready else None
        raw, self._pending = self._pending[:end].removesuffix("\n"), self._pending[end + len(PARAMETER_CLOSE) :]
        self._mode = "parameters"
        if self._streaming_string:
            return [ToolCallArguments(index, _escaped(raw) + '"')]
        return [ToolCallArguments(index, self._opening() + json.dumps(_typed(raw), ensure_ascii=False))]

    def _in_close(self) -> list[Event] | None:
        stripped = self._pending.lstrip()
        if len(stripped) < len(CALL_CLOSE) and CALL_CLOSE.startswith(stripped):
            return None
        self._pending = stripped.removeprefix(CALL_CLOSE)
        self._mode = "text"
        return []


def _escaped(text: str) -> str:
    """`text` as the inside of a JSON string literal."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _typed(raw: str) -> Any:
    """A non-string parameter: JSON when it parses (numbers, booleans, objects, arrays), else the text."""
    try:
        return json.loads(raw.strip())
    except json.JSONDecodeError:
        return raw


def _property_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Each top-level property's declared `type`: string values stream as text, the rest parse as JSON.
    The schema was checked as JSON Schema only if it is enforced, so its parts may be anything here."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {key: sub.get("type") if isinstance(sub, dict) else None for key, sub in properties.items()}
