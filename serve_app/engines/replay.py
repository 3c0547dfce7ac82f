"""The replay engine: deterministic scripted answers, tokenized with the model's real tokenizer.

A test engine for protocol tests, client end-to-end tests and overhead benchmarks; never the default.
The script (YAML or JSON) is a list of replies; the first whose `when` matches the request is emitted
token by token:

    token_delay_s: 0.01          # between tokens
    first_token_delay_s: 0.0     # before the first token (simulates queueing)
    prefill_s_per_token: 0.0     # and per prompt token not in the prefix cache (prefix_cache.py's model),
                                 # one prompt at a time per engine, as an engine's compute is one
    replies:
      - when: {turn: 0}                     # assistant messages already in the conversation
        text: "Hello! How can I help?"
      - when: {last_message: "(?i)weather"} # regex searched in the last message's text
        text: "Sunny."
      - when: {last_message: "slow"}
        text: "Eventually."
        first_token_delay_s: 5              # per reply: overrides the script's
        fail_after_tokens: 2                # raise after 2 tokens (mid-stream engine failure)
      - text: "Fallback answer."            # no `when`: matches every request
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from serve_app.engines.base import (
    Engine,
    FinishReason,
    GenerationDelta,
    GenerationRequest,
    TokenChoice,
    TokenLogprob,
    token_bytes,
)
from serve_app.engines.prefix_cache import PrefixCacheModel


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
    first_token_delay_s: float | None = Field(None, ge=0, description="Overrides the script's, for this reply.")
    fail_after_tokens: int | None = Field(None, ge=0, description="Simulate an engine failure mid-stream.")


class ReplayScript(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token_delay_s: float = Field(0.0, ge=0)
    first_token_delay_s: float = Field(0.0, ge=0)
    prefill_s_per_token: float = Field(0.0, ge=0, description="Prefill time of each uncached prompt token.")
    replies: list[_Reply] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path) -> ReplayScript:
        with open(path) as f:
            return cls.model_validate(yaml.safe_load(f))  # YAML is a superset of JSON

    def reply_for(self, messages: list[dict[str, Any]]) -> _Reply:
        for reply in self.replies:
            if reply.when.matches(messages):
                return reply
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        last = message_text(messages[-1])[:80] if messages else ""
        raise LookupError(f"replay script has no reply for turn {turn} (last message: {last!r})")


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
        self._active = 0
        self._prefix_cache = PrefixCacheModel()
        # Prefills queue for the engine's compute: a replica given more uncached prompts answers later.
        self._prefill = asyncio.Lock()

    async def start(self) -> None:
        return None  # nothing to load: the tokenizer is the model's own, passed in

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def num_unfinished_requests(self) -> int:
        return self._active

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Every choice (n) gets the same scripted text; logprobs are 0 (the script is certain)."""
        self._active += 1
        try:
            reply = self._script.reply_for(request.messages)
            token_ids = self._tokenizer.encode(reply.text, add_special_tokens=False)
            cached = self._prefix_cache.serve(request.prompt_token_ids)
            delay = (
                reply.first_token_delay_s if reply.first_token_delay_s is not None else self._script.first_token_delay_s
            )
            if delay:
                await asyncio.sleep(delay)
            if prefill_s := self._script.prefill_s_per_token * (len(request.prompt_token_ids) - cached):
                async with self._prefill:
                    await asyncio.sleep(prefill_s)
            sampling = request.sampling
            async for piece, ids, count, finish in self._pieces(token_ids, sampling.max_tokens, sampling.stop):
                if reply.fail_after_tokens is not None and count > reply.fail_after_tokens:
                    raise RuntimeError(f"scripted failure after {reply.fail_after_tokens} tokens")
                logprobs = None if sampling.logprobs is None else [self._certain(i) for i in ids]
                for index in range(sampling.n):
                    yield GenerationDelta(piece, count, finish, index, logprobs, cached)
        finally:
            self._active -= 1

    async def _pieces(
        self, token_ids: list[int], max_tokens: int, stops: tuple[str, ...]
    ) -> AsyncIterator[tuple[str, list[int], int, FinishReason | None]]:
        """(new text, its token ids, tokens so far, finish) as the tokens are 'generated'."""
        emitted, sent = "", 0
        for count in range(1, len(token_ids) + 1):
            if count > 1 and self._token_delay_s:
                await asyncio.sleep(self._token_delay_s)
            decoded = self._tokenizer.decode(token_ids[:count])
            stop_at = _first_stop(decoded, stops)
            if stop_at is not None:
                yield decoded[len(emitted) : stop_at], token_ids[sent:count], count, "stop"
                return
            last, capped = count == len(token_ids), count >= max_tokens
            finish: FinishReason | None = "stop" if last else "length" if capped else None
            if finish is None:
                # Hold back a split multi-byte character and any tail that may begin a stop string.
                visible = len(decoded) - _stop_prefix_length(decoded, stops)
                if decoded.endswith("\ufffd") or visible <= len(emitted):
                    continue
                decoded = decoded[:visible]
            yield decoded[len(emitted) :], token_ids[sent:count], count, finish
            emitted, sent = decoded, count
            if finish:
                return
        yield "", [], 0, "stop"  # an empty scripted reply

    def _certain(self, token_id: int) -> TokenLogprob:
        text = self._tokenizer.decode([token_id])
        choice = TokenChoice(text, 0.0, token_bytes(text))
        return TokenLogprob(choice, [choice])

    async def check_health(self) -> None:
        return None


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(positions) if positions else None


def _stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is the start of a stop string."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
