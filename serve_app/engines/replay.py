"""The replay engine: deterministic scripted answers, tokenized with the model's real tokenizer.

A test engine for protocol tests, client end-to-end tests and overhead benchmarks; never the default.
The script (YAML or JSON) is a list of replies; the first whose `when` matches the request is emitted
token by token:

    token_delay_s: 0.01          # between tokens
    first_token_delay_s: 0.0     # before the first token (simulates prefill or queueing)
    replies:
      - when: {turn: 0}                     # assistant messages already in the conversation
        text: "Hello! How can I help?"
      - when: {last_message: "(?i)weather"} # regex searched in the last message's text
        text: "Sunny."
      - text: "Fallback answer."            # no `when`: matches every request
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, AsyncIterator

import yaml
from pydantic import BaseModel, ConfigDict, Field

from serve_app.engines.base import Engine, GenerationDelta, GenerationRequest


class _Match(BaseModel):
    model_config = ConfigDict(extra="forbid")
    turn: int | None = Field(None, ge=0)
    last_message: str | None = None

    def matches(self, messages: list[dict[str, Any]]) -> bool:
        if self.turn is not None and self.turn != sum(1 for m in messages if m.get("role") == "assistant"):
            return False
        if self.last_message is not None:
            last = message_text(messages[-1]) if messages else ""
            if not re.search(self.last_message, last):
                return False
        return True


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: _Match = _Match()
    text: str


class ReplayScript(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token_delay_s: float = Field(0.0, ge=0)
    first_token_delay_s: float = Field(0.0, ge=0)
    replies: list[_Reply] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path) -> ReplayScript:
        with open(path) as f:
            return cls.model_validate(yaml.safe_load(f))  # YAML is a superset of JSON

    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        for reply in self.replies:
            if reply.when.matches(messages):
                return reply.text
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        raise LookupError(f"replay script has no reply for turn {turn} (last message: {message_text(messages[-1])[:80]!r})")


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


class ReplayEngine(Engine):
    def __init__(self, tokenizer: Any, script_path: Path, max_model_len: int, token_delay_s: float | None) -> None:
        self._tokenizer = tokenizer
        self._script = ReplayScript.load(script_path)
        self._max_model_len = max_model_len
        self._token_delay_s = self._script.token_delay_s if token_delay_s is None else token_delay_s

    async def start(self) -> None:
        return None  # nothing to load: the tokenizer is the model's own, passed in

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        text = self._script.reply_for(request.messages)
        token_ids = self._tokenizer.encode(text, add_special_tokens=False)
        sampling = request.sampling
        if self._script.first_token_delay_s:
            await asyncio.sleep(self._script.first_token_delay_s)
        emitted = ""
        for count in range(1, len(token_ids) + 1):
            if count > 1 and self._token_delay_s:
                await asyncio.sleep(self._token_delay_s)
            decoded = self._tokenizer.decode(token_ids[:count])
            stop_at = _first_stop(decoded, sampling.stop)
            if stop_at is not None:
                yield GenerationDelta(decoded[len(emitted) : stop_at], count, "stop")
                return
            last, capped = count == len(token_ids), count >= sampling.max_tokens
            finish = "stop" if last else "length" if capped else None
            if finish is None:
                # Hold back a split multi-byte character and any tail that may begin a stop string.
                visible = len(decoded) - _stop_prefix_length(decoded, sampling.stop)
                if decoded.endswith("\ufffd") or visible <= len(emitted):
                    continue
                decoded = decoded[:visible]
            yield GenerationDelta(decoded[len(emitted) :], count, finish)
            emitted = decoded
            if finish:
                return
        yield GenerationDelta("", 0, "stop")  # an empty scripted reply

    async def check_health(self) -> None:
        return None


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(positions) if positions else None


def _stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is the start of a stop string."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
