"""Tool-call parsing as incremental state machines over model text (no Ray, no tokenizer).

A parser is fed the model's text deltas and returns events: content to show, reasoning (formats that
carry it, such as harmony), a tool call starting (with its id and name), fragments of a call's JSON
arguments. Non-streaming parsing is the same machine fed
the whole text at once, so the two can never disagree (R4.6). Text before, between and after calls is
content; a call whose header is malformed is handed back as content, never lost.
"""

from __future__ import annotations

import json
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from serve_app.protocol.tools import FunctionDefinition

# Inside a JSON string, everything up to the next quote or backslash is plain text.
_PLAIN_STRING_RUN = re.compile(r'[^"\\]+')


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    index: int
    fragment: str


Event = ContentDelta | ReasoningDelta | ToolCallStart | ToolCallArguments


class TextParser(Protocol):
    """Anything that turns model text into events: tool parsers, reasoning parsers, their pipeline."""

    def feed(self, text: str) -> list[Event]: ...

    def finish(self) -> list[Event]: ...


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


class TextBuilder:
    """Text grown by appends in time linear in its length: a `str` attribute grown with `+=` is copied
    whole on every append, which made a call whose arguments are a whole file quadratic to parse."""

    __slots__ = ("_parts",)

    def __init__(self, text: str = "") -> None:
        self._parts = [text] if text else []

    def append(self, text: str) -> None:
        if text:
            self._parts.append(text)

    def __str__(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def __bool__(self) -> bool:
        return bool(self._parts)


class ToolParser(ABC):
    """One request's parser state. `feed` each text delta, then `finish` once the generation ends."""

    def __init__(self, tools: list[FunctionDefinition] | None = None) -> None:
        self.tools = tools or []
        self.calls_started = 0

    @abstractmethod
    def feed(self, text: str) -> list[Event]: ...

    @abstractmethod
    def finish(self) -> list[Event]: ...

    def _start_call(self, name: str) -> ToolCallStart:
        event = ToolCallStart(self.calls_started, new_call_id(), name)
        self.calls_started += 1
        return event

    def _json_call_scanner(self) -> JsonCallScanner:
        """A scanner for the next call, announcing it and streaming its arguments as this parser's events."""
        index = self.calls_started
        return JsonCallScanner(
            on_name=lambda name: [self._start_call(name)],
            on_arguments=lambda fragment: [ToolCallArguments(index, fragment)],
        )


@dataclass
class ParsedCall:
    id: str
    name: str
    fragments: TextBuilder = field(default_factory=TextBuilder)

    @property
    def arguments(self) -> str:
        """The whole arguments; `{}` for a call the model wrote none for (R3.3)."""
        return str(self.fragments) or "{}"


@dataclass
class ParsedOutput:
    """A choice's events gathered into its whole content, reasoning and calls."""

    content_parts: TextBuilder = field(default_factory=TextBuilder)
    reasoning_parts: TextBuilder = field(default_factory=TextBuilder)
    calls: list[ParsedCall] = field(default_factory=list)

    @property
    def content(self) -> str:
        return str(self.content_parts)

    @property
    def reasoning(self) -> str:
        return str(self.reasoning_parts)

    def apply(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, ContentDelta):
                self.content_parts.append(event.text)
            elif isinstance(event, ReasoningDelta):
                self.reasoning_parts.append(event.text)
            elif isinstance(event, ToolCallStart):
                self.calls.append(ParsedCall(event.id, event.name))
            else:
                self.calls[event.index].fragments.append(event.fragment)


def parse_complete(parser: TextParser, text: str) -> ParsedOutput:
    """Non-streaming: the same state machine, fed the whole text once."""
    output = ParsedOutput()
    output.apply(parser.feed(text))
    output.apply(parser.finish())
    return output


def coalesce(events: list[Event]) -> list[Event]:
    """Merge neighbouring text deltas of one kind and neighbouring argument fragments of the same call
    (joined once per run, so a run of many small events costs its length, not its length squared)."""
    merged: list[Event] = []
    run: list[str] = []
    for event in events:
        text = _text(event)
        if text == "":
            continue
        last = merged[-1] if merged else None
        if text is not None and last is not None and _same_run(last, event):
            run.append(text)
            continue
        if len(run) > 1:
            merged[-1] = _with_text(merged[-1], "".join(run))
        merged.append(event)
        run = [text] if text is not None else []
    if len(run) > 1:
        merged[-1] = _with_text(merged[-1], "".join(run))
    return merged


def _text(event: Event) -> str | None:
    """The text an event carries (None for a call's start, which carries none)."""
    if isinstance(event, (ContentDelta, ReasoningDelta)):
        return event.text
    return event.fragment if isinstance(event, ToolCallArguments) else None


def _same_run(last: Event, event: Event) -> bool:
    if isinstance(event, ToolCallArguments):
        return isinstance(last, ToolCallArguments) and last.index == event.index
    return isinstance(event, (ContentDelta, ReasoningDelta)) and type(last) is type(event)


def _with_text(event: Event, text: str) -> Event:
    if isinstance(event, ToolCallArguments):
        return ToolCallArguments(event.index, text)
    return ReasoningDelta(text) if isinstance(event, ReasoningDelta) else ContentDelta(text)


def split_at_marker(text: str, marker: str) -> tuple[str, str, bool]:
    """(content before `marker`, the text after it, True) when it occurs; otherwise (the content that
    cannot be the marker's start, the held tail that might be, False)."""
    start = text.find(marker)
    if start >= 0:
        return text[:start], text[start + len(marker) :], True
    keep = held_prefix_length(text, marker)
    return text[: len(text) - keep], text[len(text) - keep :], False


def held_prefix_length(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that could be the start of `marker` (held back as maybe-markup)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class JsonCallScanner:
    """Scans one JSON object `{"name": ..., "arguments": {...}}` character by character.

    Reports the call as soon as its name is known and streams the raw text of its arguments value as it
    arrives (`parameters` is accepted as a synonym, as Llama 3 writes it). Keys may come in any order:
    arguments written before the name are held until the name is known.
    """

    ARGUMENT_KEYS = ("arguments", "parameters")

    def __init__(self, on_name: Callable[[str], list[Event]], on_arguments: Callable[[str], list[Event]]) -> None:
        self._on_name, self._on_arguments = on_name, on_arguments
        self._raw = TextBuilder()  # everything consumed, to give back as content if the object is not a call
        self.done = False  # the object closed
        self.failed = False  # the text stopped being a call object (the rest is not consumed)
        self.named = False
        self.saw_arguments = False
        self._depth = 0
        self._in_string = self._escaped = False
        self._key: str | None = None  # the depth-1 key whose value is being read
        self._token = TextBuilder()  # the current depth-1 key or name value, raw
        self._state = "start"  # start, key, colon, value, after_value
        self._held_arguments = TextBuilder()

    @property
    def raw(self) -> str:
        return str(self._raw)

    def feed(self, text: str) -> tuple[list[Event], str]:
        """Consume until the object closes or stops being a call; returns events and the unconsumed text.
        Inside a string, a run of plain characters (a file's content, say) is taken in one step."""
        events: list[Event] = []
        position = 0
        while position < len(text):
            if self._in_string and not self._escaped and (run := _PLAIN_STRING_RUN.match(text, position)):
                events += self._string_run(run.group())
                self._raw.append(run.group())
                position = run.end()
                continue
            try:
                events += self._step(text[position])
            except ValueError:
                self.failed = True
                return events, text[position:]
            self._raw.append(text[position])
            position += 1
            if self.done:
                return events, text[position:]
        return events, ""

    def _string_run(self, run: str) -> list[Event]:
        """Plain characters inside a key or value string: what `_step` does to each of them, at once."""
        self._token.append(run)
        return self._arguments(run) if self._state == "value" and self._key in self.ARGUMENT_KEYS else []

    def _step(self, char: str) -> list[Event]:
        if self._state == "start":
            if char == "{":
                self._depth, self._state = 1, "key"
            elif not char.isspace():
                raise ValueError("not a JSON object")
            return []
        string_char = self._string_step(char)
        if self._state == "value":
            return self._value_step(char, string_char)
        if self._state == "key":
            if string_char or char == '"':
                self._token.append(char)
                if not self._in_string and self._token:  # closing quote
                    self._key, self._token, self._state = json.loads(str(self._token)), TextBuilder(), "colon"
            elif char == "}":
                return self._close()
            elif not char.isspace() and char != ",":
                raise ValueError("malformed key")
        elif self._state == "colon":
            if char == ":":
                self._state = "value"
            elif not char.isspace():
                raise ValueError("expected ':'")
        return []

    def _string_step(self, char: str) -> bool:
        """Track string state; True when `char` is inside (or closes) a string."""
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
            return True
        if char == '"':
            self._in_string = True
            return True
        return False

    def _value_step(self, char: str, string_char: bool) -> list[Event]:
        if not string_char:
            if char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
            if self._depth == 0 or (self._depth == 1 and char == ","):  # the value ended before `char`
                events = self._end_value()
                if self._depth == 0:
                    events += self._close()
                else:
                    self._state = "key"
                return events
            if char.isspace() and self._depth == 1:
                return []  # whitespace around the value, not inside it
        self._token.append(char)
        if self._key in self.ARGUMENT_KEYS:
            return self._arguments(char)
        return []

    def _arguments(self, fragment: str) -> list[Event]:
        self.saw_arguments = True
        if not self.named:
            self._held_arguments.append(fragment)
            return []
        return self._on_arguments(fragment)

    def _end_value(self) -> list[Event]:
        value, self._token = str(self._token), TextBuilder()
        if self._key == "name":
            name = json.loads(value)
            if not isinstance(name, str) or not name:
                raise ValueError("name is not a non-empty string")
            self.named = True
            events = self._on_name(name)
            if self._held_arguments:
                events += self._on_arguments(str(self._held_arguments))
            return events
        return []

    def _close(self) -> list[Event]:
        self.done = True
        if not self.named:
            raise ValueError("a JSON object without a name")
        return []


ParserFactory = Callable[[list[FunctionDefinition]], ToolParser]
_REGISTRY: dict[str, ParserFactory] = {}


def register(name: str) -> Callable[[type[ToolParser]], type[ToolParser]]:
    def add(cls: type[ToolParser]) -> type[ToolParser]:
        _REGISTRY[name] = cls
        return cls

    return add


class MarkupModeParser(ToolParser):
    """A parser that moves between named modes once its opening marker appears in the text.

    Each mode is a method `_in_<mode>` that consumes from `_pending` and returns events, or None when it
    needs more text; `_read` keeps the markup consumed for a call not yet announced, to give it back as
    content if it turns out not to be one.
    """

    OPENING: str
    AFTER_OPENING: str  # the mode entered when the opening marker is found

    def __init__(self, tools: list[FunctionDefinition] | None = None) -> None:
        super().__init__(tools)
        self._pending = ""
        self._mode = "text"
        self._read = ""

    def feed(self, text: str) -> list[Event]:
        self._pending += text
        events: list[Event] = []
        while self._pending:
            step = getattr(self, f"_in_{self._mode}")()
            if step is None:
                break  # need more text
            events += step
        return coalesce(events)

    def _in_text(self) -> list[Event] | None:
        content, self._pending, found = split_at_marker(self._pending, self.OPENING)
        if not found:
            return [ContentDelta(content)] if content else None
        self._mode, self._read = self.AFTER_OPENING, self.OPENING
        return [ContentDelta(content)]


class FirstCallOnly(ToolParser):
    """`parallel_tool_calls: false` (R2.3): the first call is kept, later ones are not emitted."""

    def __init__(self, inner: ToolParser) -> None:
        super().__init__(inner.tools)
        self._inner = inner

    def feed(self, text: str) -> list[Event]:
        return self._first_only(self._inner.feed(text))

    def finish(self) -> list[Event]:
        return self._first_only(self._inner.finish())

    @staticmethod
    def _first_only(events: list[Event]) -> list[Event]:
        return [e for e in events if isinstance(e, (ContentDelta, ReasoningDelta)) or e.index == 0]


def create_parser(name: str, tools: list[FunctionDefinition], parallel_calls: bool = True) -> ToolParser:
    from serve_app import tool_parsers  # noqa: F401  (imports every format, filling the registry)

    if name not in _REGISTRY:
        raise KeyError(f"unknown tool parser {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    parser = _REGISTRY[name](tools)
    return parser if parallel_calls else FirstCallOnly(parser)


def parser_names() -> list[str]:
    from serve_app import tool_parsers  # noqa: F401

    return sorted(_REGISTRY)
