"""Hermes format (Qwen2.5, Qwen3, Hermes; our default for templates without tools):

text <tool_call>
{"name": "read_file", "arguments": {"path": "a.py"}}
</tool_call> text
"""

from __future__ import annotations

from serve_app.protocol.tools import FunctionDefinition
from serve_app.tool_parsers.base import (
    ContentDelta,
    Event,
    JsonCallScanner,
    ToolCallArguments,
    ToolParser,
    coalesce,
    register,
    split_at_marker,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@register("hermes")
class HermesToolParser(ToolParser):
    def __init__(self, tools: list[FunctionDefinition] | None = None) -> None:
        super().__init__(tools)
        self._pending = ""  # text not yet classified (a possible marker start)
        self._scanner: JsonCallScanner | None = None
        self._after_call = False  # the JSON closed; expecting </tool_call>

    def feed(self, text: str) -> list[Event]:
        self._pending += text
        events: list[Event] = []
        while self._pending:
            if self._scanner is not None:
                events += self._scan()
            elif self._after_call:
                if not self._skip_close():
                    break
            else:
                content, self._pending, found = split_at_marker(self._pending, OPEN)
                events.append(ContentDelta(content))
                if not found:
                    break
                self._scanner = self._json_call_scanner()
        return coalesce(events)

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._scanner is not None and not self._scanner.named:
            events.append(ContentDelta(OPEN + self._scanner.raw))  # unterminated before it became a call
        self._scanner = None
        if not self._after_call:
            events.append(ContentDelta(self._pending))
        self._pending = ""
        return coalesce(events)

    def _scan(self) -> list[Event]:
        assert self._scanner is not None
        scanner = self._scanner
        events, self._pending = scanner.feed(self._pending)
        if scanner.failed:
            self._scanner = None
            if not scanner.named:  # never became a call: give back what was read as content
                events.append(ContentDelta(OPEN + scanner.raw))
            return events  # an announced call ends here; the rest is read as text
        if scanner.done:
            if not scanner.saw_arguments:
                events.append(ToolCallArguments(self.calls_started - 1, "{}"))
            self._scanner, self._after_call = None, True
        return events

    def _skip_close(self) -> bool:
        """After the JSON: whitespace, then </tool_call>. False when more text is needed to decide."""
        stripped = self._pending.lstrip()
        if not stripped:
            return False
        if stripped.startswith(CLOSE):
            self._pending = stripped[len(CLOSE) :]
            self._after_call = False
            return True
        if CLOSE.startswith(stripped):
            return False
        self._after_call = False  # no closing tag: treat what follows as text
        return True
