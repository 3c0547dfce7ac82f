"""Llama 3.1+ JSON tool calls: the whole answer is one or more call objects, `;`-separated, optionally after
`<|python_tag|>`:

    {"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "now", "parameters": {}}

An answer that does not start with a call object is plain content.
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
)

PYTHON_TAG = "<|python_tag|>"


@register("llama3_json")
class Llama3JsonToolParser(ToolParser):
    def __init__(self, tools: list[FunctionDefinition] | None = None) -> None:
        super().__init__(tools)
        self._pending = ""
        self._mode = "decide"  # decide (leading text), calls (between objects), call (in an object), content
        self._scanner: JsonCallScanner | None = None
        self._consumed = ""  # what the calls mode swallowed (tag, separators), returned if nothing was a call

    def feed(self, text: str) -> list[Event]:
        self._pending += text
        events: list[Event] = []
        while self._pending:
            if self._mode == "content":
                events.append(ContentDelta(self._pending))
                self._pending = ""
            elif self._mode == "call":
                events += self._scan()
            elif not self._between_calls():
                break
        return coalesce(events)

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._scanner is not None and not self._scanner.named:
            events.append(ContentDelta(self._consumed + self._scanner.raw))
        elif self._mode == "decide" or (self.calls_started == 0 and self._consumed):
            events.append(ContentDelta(self._consumed))
        if self._mode != "calls" or self._pending.strip():  # whitespace after the last call is not content
            events.append(ContentDelta(self._pending))
        self._pending, self._scanner = "", None
        return coalesce(events)

    def _between_calls(self) -> bool:
        """Skip whitespace, `;` and the python tag; start a call at `{`. False: need more text."""
        stripped = self._pending.lstrip()
        skipped = self._pending[: len(self._pending) - len(stripped)]
        if not stripped:
            return False  # only whitespace so far: what follows decides what it is
        if stripped.startswith(PYTHON_TAG) or (stripped.startswith(";") and self._mode == "calls"):
            marker = PYTHON_TAG if stripped.startswith(PYTHON_TAG) else ";"
            self._consumed += skipped + marker
            self._pending = stripped[len(marker) :]
            return True
        if PYTHON_TAG.startswith(stripped):
            return False  # maybe the tag, still arriving
        if stripped.startswith("{"):
            self._consumed += skipped
            self._pending = stripped
            self._mode, self._scanner = "call", self._json_call_scanner()
            return True
        # Not a call: before any call everything is content; after calls, the rest is content.
        self._pending = (self._consumed if self.calls_started == 0 else "") + self._pending
        self._consumed, self._mode = "", "content"
        return True

    def _scan(self) -> list[Event]:
        assert self._scanner is not None
        scanner = self._scanner
        events, self._pending = scanner.feed(self._pending)
        if scanner.failed:
            self._scanner = None
            if not scanner.named and self.calls_started == 0:
                self._pending = self._consumed + scanner.raw + self._pending
                self._consumed = ""
            self._mode = "content"
        elif scanner.done:
            if not scanner.saw_arguments:
                events.append(ToolCallArguments(self.calls_started - 1, "{}"))
            self._scanner, self._mode = None, "calls"
        return events
