"""One choice's output: model text -> reasoning, content and tool-call events, and the choice-level rules.

The parsers are chained: a reasoning parser splits reasoning from the answer, the tool parser reads
calls out of the answer. Harmony (gpt-oss) is one format for all three, read by one machine. Streaming
and whole answers feed the same `ChoiceOutput` delta by delta, so they cannot disagree.
"""

from __future__ import annotations

from serve_app.engines.base import FinishReason as EngineFinishReason
from serve_app.engines.base import GenerationDelta
from serve_app.protocol.common import FinishReason, Usage
from serve_app.protocol.tools import FunctionDefinition
from serve_app.reasoning import ReasoningFormat, ThinkParser
from serve_app.tool_parsers import create_parser
from serve_app.tool_parsers.base import (
    ContentDelta,
    Event,
    ParsedCall,
    ReasoningDelta,
    TextBuilder,
    TextParser,
    ToolCallArguments,
    ToolCallStart,
)


class ParserChain:
    """A reasoning parser's answer text fed on to a tool parser; reasoning passes through."""

    def __init__(self, reasoning: TextParser, tools: TextParser) -> None:
        self._reasoning, self._tools = reasoning, tools

    def feed(self, text: str) -> list[Event]:
        return self._on(self._reasoning.feed(text))

    def finish(self) -> list[Event]:
        return self._on(self._reasoning.finish()) + self._tools.finish()

    def _on(self, events: list[Event]) -> list[Event]:
        routed: list[Event] = []
        for event in events:
            routed += self._tools.feed(event.text) if isinstance(event, ContentDelta) else [event]
        return routed


def create_output_parser(
    reasoning: ReasoningFormat | None,
    tool_parser: str | None,
    tools: list[FunctionDefinition],
    parallel_calls: bool,
    starts_in_reasoning: bool = False,
) -> TextParser | None:
    """The parser for one choice; None when the text is all content (no reasoning, no tools)."""
    if reasoning == "harmony" and tool_parser == "harmony":
        return create_parser("harmony", tools, parallel_calls)
    calls = create_parser(tool_parser, tools, parallel_calls) if tool_parser else None
    if reasoning is None:
        return calls
    # Harmony without calls to read is a reasoning parser; its final channel feeds e.g. a forced call's JSON.
    first = create_parser("harmony", []) if reasoning == "harmony" else ThinkParser(starts_in_reasoning)
    return ParserChain(first, calls) if calls is not None else first


class ChoiceOutput:
    """One choice's text through its parser, with what the choice-level rules need to know."""

    def __init__(self, parser: TextParser | None) -> None:
        self._parser = parser
        self.called = False
        self.reasoning_tokens = 0
        self.completion_tokens = 0
        self._content = TextBuilder()
        self._reasoning = TextBuilder()
        self.calls: list[ParsedCall] = []  # what the post-check of enforced tool schemas reads

    def feed(self, text: str, completion_tokens: int) -> list[Event]:
        """Events for one engine delta; its tokens count as reasoning when it produced reasoning."""
        new_tokens, self.completion_tokens = completion_tokens - self.completion_tokens, completion_tokens
        if self._parser is None:
            events: list[Event] = [ContentDelta(text)] if text else []
        else:
            events = self._parser.feed(text)
        if any(isinstance(e, ReasoningDelta) for e in events):
            self.reasoning_tokens += new_tokens
        return self._account(events)

    def finish(self, engine_reason: EngineFinishReason | None) -> list[Event]:
        events = self._account(self._parser.finish() if self._parser is not None else [])
        if self._reasoning and not self.content.strip() and not self.called and engine_reason != "length":
            # R6.2: a turn that only reasoned is not an empty success; its reasoning is the answer.
            events.append(ContentDelta(str(self._reasoning).strip()))
        return events

    @property
    def content(self) -> str:
        return str(self._content)

    def finish_reason(self, engine_reason: EngineFinishReason | None) -> FinishReason:
        # A cap that cut the output, a call included, is `length`: the client must not run a partial call.
        if engine_reason == "length":
            return "length"
        return "tool_calls" if self.called else engine_reason or "stop"

    def _account(self, events: list[Event]) -> list[Event]:
        for event in events:
            if isinstance(event, ReasoningDelta):
                self._reasoning.append(event.text)
            elif isinstance(event, ContentDelta):
                self._content.append(event.text)
            elif isinstance(event, ToolCallStart):
                self.called = True
                self.calls.append(ParsedCall(event.id, event.name))
            elif isinstance(event, ToolCallArguments):
                self.calls[event.index].fragments.append(event.fragment)
        return events


class AnswerOutput:
    """All choices of one answer, fed the engine's deltas, and what its `usage` counts."""

    def __init__(self, choices: list[ChoiceOutput], prompt_tokens: int) -> None:
        self.choices = choices
        self._prompt_tokens = prompt_tokens
        self._cached_tokens = 0

    def feed(self, delta: GenerationDelta) -> list[Event]:
        self._cached_tokens = max(self._cached_tokens, delta.cached_tokens)
        return self.choices[delta.index].feed(delta.text, delta.completion_tokens)

    def usage(self) -> Usage:
        return Usage.of(
            self._prompt_tokens,
            sum(c.completion_tokens for c in self.choices),
            reasoning_tokens=sum(c.reasoning_tokens for c in self.choices),
            cached_tokens=self._cached_tokens,
        )
