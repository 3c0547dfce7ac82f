"""Mistral tool calls after the `[TOOL_CALLS]` marker, in both of Mistral's dialects:

text [TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]   (v0.3 templates)
text [TOOL_CALLS]f[ARGS]{"a": 1}[TOOL_CALLS]g[ARGS]{}                                       (v11+ tokenizers)
"""

from __future__ import annotations

import re

from serve_app.protocol.tools import FunctionDefinition
from serve_app.tool_parsers.base import (
    ContentDelta,
    Event,
    JsonCallScanner,
    MarkupModeParser,
    ToolCallArguments,
    coalesce,
    held_prefix_length,
    register,
)

MARKER, ARGS = "[TOOL_CALLS]", "[ARGS]"
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@register("mistral")
class MistralToolParser(MarkupModeParser):
    # Modes: text, marker (dialect unknown), array, object, name, args.
    OPENING, AFTER_OPENING = MARKER, "marker"

    def __init__(self, tools: list[FunctionDefinition] | None = None) -> None:
        super().__init__(tools)
        self._scanner: JsonCallScanner | None = None
        self._depth, self._in_string, self._escaped, self._args_started = 0, False, False, False

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._mode in ("marker", "name", "array", "object"):  # unfinished markup that was not a call
            scanned = self._scanner.raw if self._scanner and not self._scanner.named else ""
            events.append(ContentDelta(self._read + scanned))
        events.append(ContentDelta(self._pending))
        self._pending, self._mode = "", "text"
        return coalesce(events)

    def _in_marker(self) -> list[Event] | None:
        stripped = self._pending.lstrip()
        if not stripped:
            return None
        self._read += self._pending[: len(self._pending) - len(stripped)]
        if stripped.startswith("["):
            self._read += "["
            self._pending, self._mode = stripped[1:], "array"
        else:
            self._pending, self._mode = stripped, "name"
        return []

    def _in_array(self) -> list[Event] | None:
        stripped = self._pending.lstrip(" \n\t\r,")
        if not stripped:
            self._read += self._pending
            self._pending = ""
            return None
        if stripped.startswith("]"):
            self._pending, self._mode, self._read = stripped[1:], "text", ""
            return []
        if stripped.startswith("{"):
            self._pending, self._mode = stripped, "object"
            self._scanner = self._json_call_scanner()
            return []
        return self._give_up()

    def _in_object(self) -> list[Event] | None:
        assert self._scanner is not None
        scanner = self._scanner
        events, self._pending = scanner.feed(self._pending)
        if scanner.failed:
            return events + self._give_up(scanner)
        if scanner.done:
            if not scanner.saw_arguments:
                events.append(ToolCallArguments(self.calls_started - 1, "{}"))
            self._scanner, self._mode, self._read = None, "array", ""
        return events

    def _in_name(self) -> list[Event] | None:
        end = self._pending.find(ARGS)
        if end < 0:
            candidate = self._pending[: len(self._pending) - held_prefix_length(self._pending, ARGS)]
            return None if not candidate or NAME.match(candidate) else self._give_up()
        name = self._pending[:end]
        if not NAME.match(name):
            return self._give_up()
        self._pending, self._mode = self._pending[end + len(ARGS) :], "args"
        self._depth, self._in_string, self._escaped, self._args_started = 0, False, False, False
        return [self._start_call(name)]

    def _in_args(self) -> list[Event] | None:
        """A raw JSON value: streamed as it comes, ended when its brackets balance."""
        index = self.calls_started - 1
        if not self._args_started:
            stripped = self._pending.lstrip()
            if not stripped:
                self._pending = ""
                return None
            self._pending, self._args_started = stripped, True
        for position, char in enumerate(self._pending):
            if self._in_string:
                self._escaped, self._in_string = (False, True) if self._escaped else (char == "\\", char != '"')
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
            if self._depth == 0 and not self._in_string:
                fragment, self._pending = self._pending[: position + 1], self._pending[position + 1 :]
                self._mode, self._read = "text", ""
                return [ToolCallArguments(index, fragment)]
        fragment, self._pending = self._pending, ""
        return [ToolCallArguments(index, fragment)]

    def _give_up(self, scanner: JsonCallScanner | None = None) -> list[Event]:
        """Not (or no longer) a call: unannounced text goes back to content; parsing continues as text."""
        unannounced = scanner.raw if scanner is not None and not scanner.named else ""
        events: list[Event] = [ContentDelta(self._read + unannounced)]
        self._mode, self._read, self._scanner = "text", "", None
        return events
