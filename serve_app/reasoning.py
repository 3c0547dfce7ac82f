"""Reasoning models: their thinking separated from the answer (R6.1), and `reasoning_effort` (R6.3).

A model's reasoning format is set in its config (`reasoning_parser`):

- `think`: `<think>...</think>` before the answer (Qwen3, DeepSeek-R1 and its distills). Templates
  that open the block in the prompt, so the model starts inside it, are recognised by the prompt's end.
- `harmony`: gpt-oss, whose `analysis` channel is reasoning. Reasoning, answer and tool calls are one
  format there, read by the harmony tool parser (`tool_parsers/harmony.py`).
"""

from __future__ import annotations

from typing import Any, Literal

from serve_app.tool_parsers.base import ContentDelta, Event, ReasoningDelta, coalesce, split_at_marker

ReasoningFormat = Literal["think", "harmony"]
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# vLLM's reasoning parsers for the same formats: its structured-output backend starts enforcing a JSON
# constraint only after the reasoning ends (deepseek_r1 handles both an opened and a pre-opened block).
VLLM_REASONING_PARSERS: dict[str, str] = {"think": "deepseek_r1", "harmony": "openai_gptoss"}
# Harmony has three levels; OpenAI's wider scale is folded onto them.
HARMONY_LEVELS = {
    "none": "low",
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def template_kwargs(reasoning: ReasoningFormat | None, effort: str | None) -> dict[str, Any]:
    """The chat-template switch for `reasoning_effort`; models without reasoning ignore it (R6.3)."""
    if effort is None or reasoning is None:
        return {}
    if reasoning == "think":  # Qwen3's template switch; other templates ignore unknown variables
        return {"enable_thinking": effort not in ("none", "minimal")}
    return {"reasoning_effort": HARMONY_LEVELS[effort]}


def starts_in_reasoning(reasoning: ReasoningFormat | None, prompt: str) -> bool:
    return reasoning == "think" and prompt.rstrip().endswith(THINK_OPEN)


class ThinkParser:
    """`<think>reasoning</think>answer`, incrementally. Without an opening tag (and not opened by the
    prompt) the whole text is the answer; whitespace between the block and the answer is dropped."""

    def __init__(self, in_reasoning: bool = False) -> None:
        self._state = "reasoning" if in_reasoning else "start"
        self._pending = ""
        self._started = False  # the current part (reasoning or answer) has shown non-whitespace text

    def feed(self, text: str) -> list[Event]:
        self._pending += text
        events: list[Event] = []
        while self._pending:
            if self._state == "start":
                head = self._pending.lstrip()
                if head.startswith(THINK_OPEN):
                    self._state, self._pending = "reasoning", head[len(THINK_OPEN) :]
                elif THINK_OPEN.startswith(head):
                    break  # maybe the opening tag, not complete yet
                else:
                    self._state = "answer"
            elif self._state == "reasoning":
                reasoning, self._pending, closed = split_at_marker(self._pending, THINK_CLOSE)
                events.append(self._part(ReasoningDelta, reasoning))
                if not closed:
                    break
                self._state, self._started = "answer", False
            else:
                events.append(self._part(ContentDelta, self._pending))
                self._pending = ""
        return coalesce(events)

    def finish(self) -> list[Event]:
        kind = ReasoningDelta if self._state == "reasoning" else ContentDelta
        events = [self._part(kind, self._pending)]
        self._pending = ""
        return coalesce(events)

    def _part(self, kind: type[ContentDelta] | type[ReasoningDelta], text: str) -> Event:
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        return kind(text)
