"""Harmony format (gpt-oss): the completion is a sequence of messages, each a header and a body.

    <|channel|>analysis<|message|>The user wants the weather.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>
    <|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>

The `analysis` channel is reasoning; a message with a recipient (`to=functions.NAME`, in the header
before or after the channel) is a tool call whose body is its JSON arguments; `final` and `commentary`
without recipient (preambles) are content. The markup is harmony's special tokens, so the engine must
keep special tokens in its text. The format is defined by the `openai-harmony` library, which renders
this module's test fixtures. Text that is not harmony at all is passed through as content.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from serve_app.protocol.tools import FunctionDefinition
from serve_app.tool_parsers.base import (
    ContentDelta,
    Event,
    ReasoningDelta,
    ToolCallArguments,
    ToolParser,
    coalesce,
    register,
)

MESSAGE = "<|message|>"
BODY_ENDS = ("<|end|>", "<|call|>", "<|return|>")
MARKUP = re.compile(r"<\|[a-z_]+\|>")
RECIPIENT = re.compile(r"\bto=(\S+)")
CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
# A header is a few tokens (`<|start|>assistant<|channel|>commentary to=functions.x <|constrain|>json`);
# a longer run of text without `<|message|>` is not harmony.
MAX_HEADER_CHARS = 512
FUNCTIONS_NAMESPACE = "functions."


@register("harmony")
class HarmonyParser(ToolParser):
    """Calls are recognised when the request declared tools; without tools a recipient's body is content."""

    def __init__(self, tools: list[FunctionDefinition] | None = None) -> None:
        super().__init__(tools)
        self._buffer = ""  # a header being read, or the held tail of a body that may be an end marker
        self._body: Callable[[str], Event] | None = None  # where the current message's body goes
        self._json = _StringTracker()  # active in a call's body, whose strings may contain markup
        self._plain = False  # the text turned out not to be harmony: all content from here on

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        events: list[Event] = []
        while self._buffer:
            if self._plain:
                events.append(ContentDelta(self._buffer))
                self._buffer = ""
            elif self._body is None:
                if not self._read_header(events):
                    break
            elif not self._read_body(events):
                break
        return coalesce(events)

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._body is not None:
            events.append(self._body(self._buffer))  # the engine stopped on <|call|>/<|return|> or the cap
        elif not self._buffer.lstrip().startswith("<|"):
            events.append(ContentDelta(self._buffer))  # not markup: model text, never lost
        self._buffer, self._body = "", None
        return coalesce(events)

    def _read_header(self, events: list[Event]) -> bool:
        """Open the next message when its header is complete; False while more text is needed."""
        end = self._buffer.find(MESSAGE)
        if end < 0:
            head = self._buffer.lstrip()
            if len(self._buffer) > MAX_HEADER_CHARS or not (head.startswith("<|") or "<|".startswith(head)):
                self._plain = True
                return True
            return False
        header, self._buffer = self._buffer[:end], self._buffer[end + len(MESSAGE) :]
        self._body = self._route(header, events)
        return True

    def _route(self, header: str, events: list[Event]) -> Callable[[str], Event]:
        recipient = RECIPIENT.search(MARKUP.sub(" ", header))
        if recipient is not None and self.tools:
            start = self._start_call(recipient.group(1).removeprefix(FUNCTIONS_NAMESPACE))
            events.append(start)
            self._json = _StringTracker(active=True)
            return lambda text: ToolCallArguments(start.index, text)
        self._json = _StringTracker()
        channel = CHANNEL.search(header)
        if channel is not None and channel.group(1) == "analysis" and recipient is None:
            return ReasoningDelta
        return ContentDelta

    def _read_body(self, events: list[Event]) -> bool:
        """Pass body text on up to its end marker; False when the rest may be the start of one."""
        assert self._body is not None
        end, marker = self._find_end()
        if marker:
            events.append(self._body(self._buffer[:end]))
            self._buffer, self._body = self._buffer[end + len(marker) :], None
            return True
        events.append(self._body(self._buffer[:end]))
        self._buffer = self._buffer[end:]
        return False

    def _find_end(self) -> tuple[int, str]:
        """(where the body ends, its end marker), or (how much is body for sure, "") with the rest held.
        In a call's JSON arguments, markup inside strings is text (`{"text": "a <|end|> b"}`)."""
        text = self._buffer
        for position, char in enumerate(text):
            if char == "<" and not self._json.in_string:
                rest = text[position:]
                for marker in BODY_ENDS:
                    if rest.startswith(marker):
                        return position, marker
                if any(marker.startswith(rest) for marker in BODY_ENDS):
                    return position, ""
            if self._json.active:
                self._json.step(char)
        return len(text), ""


class _StringTracker:
    """Whether a position in JSON text is inside a string (escapes honoured)."""

    def __init__(self, active: bool = False) -> None:
        self.active = active
        self.in_string = False
        self._escaped = False

    def step(self, char: str) -> None:
        if self._escaped:
            self._escaped = False
        elif self.in_string and char == "\\":
            self._escaped = True
        elif char == '"':
            self.in_string = not self.in_string
