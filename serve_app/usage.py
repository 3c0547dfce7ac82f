"""What one request cost in tokens, counted as its response's `usage` fields count them (issue #20): the
figure a key's tokens-per-minute limit is charged and the metrics count.

A whole answer's body always carries its `usage`, so the ingress reads it there. A stream carries usage on
the wire only when the client asked (`stream_options.include_usage`), so every stream's renderer sends
`UsageReport`s among its frames: plain values that the ingress keeps and never sends. The first, before any
token, counts the prompt; the last, after `[DONE]`, the whole stream. A stream cut before its end (its
client left, its deadline passed) is charged by the latest report it got: its prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from starlette.types import Scope

from serve_app.protocol.common import Usage

METERED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})
"""The API paths whose requests cost tokens: what limits are charged for and metrics measure."""

_USAGE_KEY = b'"usage":'


@dataclass(frozen=True)
class UsageReport:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, usage: Usage) -> UsageReport:
        return cls(usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens)

    @classmethod
    def from_body(cls, body: bytes) -> UsageReport | None:
        """The `usage` of a whole JSON answer (chat, completion, embeddings or a `response` object, whose usage
        counts `input_tokens` and `output_tokens`), without parsing the rest: an embeddings body may be
        megabytes of vectors. Its usage is the last object named `usage`: within strings the quotes are
        escaped, so `"usage":` cannot occur there."""
        at = body.rfind(_USAGE_KEY)
        if at < 0:
            return None
        try:
            usage, _ = json.JSONDecoder().raw_decode(body[at + len(_USAGE_KEY) :].decode().lstrip())
            if "input_tokens" in usage:
                cached = usage["input_tokens_details"]["cached_tokens"]
                return cls(usage["input_tokens"], usage["output_tokens"], cached)
            details = usage.get("prompt_tokens_details") or {}
            return cls(usage["prompt_tokens"], usage.get("completion_tokens", 0), details.get("cached_tokens", 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def request_usage(scope: Scope) -> UsageReport | None:
    """What a finished request cost, as far as it got: `http_api` keeps the latest report in the request's
    state, where the middlewares that count it read it when the request ends."""
    return cast(UsageReport | None, scope.get("state", {}).get("usage"))
