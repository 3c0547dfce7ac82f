"""Pythonic tool calls (Llama 3.2/4, some fine-tunes): the answer is a Python list of calls,

    [get_weather(city="Paris", days=3), now()]

Keyword values are Python literals, converted to JSON; each argument is sent as soon as its value is
complete. An answer that does not start with such a list is plain content.
"""

from __future__ import annotations

import ast
import json
import re

from serve_app.protocol.tools import FunctionDefinition
from serve_app.tool_parsers.base import (
    ContentDelta,
    Event,
    TextBuilder,
    ToolCallArguments,
    ToolParser,
    coalesce,
    register,
)

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# Inside a quoted value, everything up to the next quote of its kind or backslash is plain text.
_PLAIN_RUN = {'"': re.compile(r'[^"\\]+'), "'": re.compile(r"[^'\\]+")}


class _NotACall(Exception):
    pass


@register("pythonic")
class PythonicToolParser(ToolParser):
    def __init__(self, tools: list[FunctionDefinition] | None = None) -> None:
        super().__init__(tools)
        self._pending = ""  # text after a call turned out not to be one, shown with the next delta
        self._read = TextBuilder()  # consumed text, given back as content if no call was announced
        self._mode = "decide"  # decide, list, name, arguments, key, value, content
        self._token = TextBuilder()
        self._arguments_sent = 0
        self._depth, self._quote, self._escaped = 0, "", False

    def feed(self, text: str) -> list[Event]:
        text, self._pending = self._pending + text, ""
        events: list[Event] = []
        position = 0
        try:
            while position < len(text):
                if self._mode == "content":
                    events.append(ContentDelta(text[position:]))
                    position = len(text)
                elif run := self._plain_run(text, position):  # inside a string: taken in one step
                    self._read.append(run)
                    self._token.append(run)
                    position += len(run)
                else:
                    char = text[position]
                    position += 1
                    self._read.append(char)
                    events += getattr(self, f"_{self._mode}")(char)
        except _NotACall:
            events += self._give_up()
        self._pending = text[position:]
        return coalesce(events)

    def _plain_run(self, text: str, position: int) -> str:
        """Inside a quoted value: the characters up to the next quote of its kind or backslash."""
        if self._mode != "value" or not self._quote or self._escaped:
            return ""
        run = _PLAIN_RUN[self._quote].match(text, position)
        return run.group() if run else ""

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._mode != "content":  # unfinished: what was read since the last announced call is content
            events.append(ContentDelta(str(self._read)))
        events.append(ContentDelta(self._pending))
        self._pending, self._read = "", TextBuilder()
        return coalesce(events)

    def _give_up(self) -> list[Event]:
        events: list[Event] = [ContentDelta(str(self._read))]
        self._mode, self._read = "content", TextBuilder()
        return events

    def _decide(self, char: str) -> list[Event]:
        if char == "[":
            self._mode = "list"
        elif not char.isspace():
            raise _NotACall
        return []

    def _list(self, char: str) -> list[Event]:
        if char.isspace() or (char == "," and self.calls_started):
            return []
        if char == "]" and self.calls_started:
            self._mode, self._read = "content", TextBuilder()  # the list closed: anything after it is content
            return []
        if not IDENTIFIER.match(char):
            raise _NotACall
        self._token, self._mode = TextBuilder(char), "name"
        return []

    def _name(self, char: str) -> list[Event]:
        if char == "(":
            name = str(self._token)
            if not IDENTIFIER.fullmatch(name):
                raise _NotACall
            self._mode, self._arguments_sent, self._read = "arguments", 0, TextBuilder()
            return [self._start_call(name)]
        if not (char.isalnum() or char in "_."):
            raise _NotACall
        self._token.append(char)
        return []

    def _arguments(self, char: str) -> list[Event]:
        index = self.calls_started - 1
        if char.isspace() or (char == "," and self._arguments_sent):
            return []
        if char == ")":
            self._mode = "list"
            return [ToolCallArguments(index, "}" if self._arguments_sent else "{}")]
        if not IDENTIFIER.match(char):
            raise _NotACall
        self._token, self._mode = TextBuilder(char), "key"
        return []

    def _key(self, char: str) -> list[Event]:
        if char == "=":
            self._key_name, self._token, self._mode = str(self._token).strip(), TextBuilder(), "value"
            self._depth, self._quote, self._escaped = 0, "", False
            return []
        if not (char.isalnum() or char in "_ "):
            raise _NotACall
        self._token.append(char)
        return []

    def _value(self, char: str) -> list[Event]:
        """A Python literal, ended by `,` or `)` outside brackets and strings."""
        if self._quote:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == self._quote:
                self._quote = ""
        elif char in "\"'":
            self._quote = char
        elif char in "[{(":
            self._depth += 1
        elif char in "]})" and self._depth:
            self._depth -= 1
        elif char in ",)" and self._depth == 0:
            return self._end_value(char)
        self._token.append(char)
        return []

    def _end_value(self, terminator: str) -> list[Event]:
        try:
            value = ast.literal_eval(str(self._token).strip())
            encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (ValueError, SyntaxError, TypeError) as exc:
            raise _NotACall from exc
        index = self.calls_started - 1
        opening = "{" if not self._arguments_sent else ", "
        self._arguments_sent += 1
        events: list[Event] = [ToolCallArguments(index, f"{opening}{json.dumps(self._key_name)}: {encoded}")]
        self._mode = "arguments"
        if terminator == ")":
            events += self._arguments(")")
        return events
