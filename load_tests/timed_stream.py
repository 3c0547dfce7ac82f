"""Streamed chat requests, timed: what the benchmarks that measure an agent's wait read of a stream."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class TimedStream:
    first_token_s: float  # from sending the request to the first chunk with a choice
    total_s: float  # from sending the request to the stream's end
    usage: dict[str, Any]  # the final usage chunk's (the body must ask for it: `stream_options.include_usage`)


def timed_stream(base_url: str, body: dict[str, Any]) -> TimedStream:
    started = time.monotonic()
    first: float | None = None
    usage: dict[str, Any] = {}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body | {"stream": True}, timeout=1800) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            assert "error" not in chunk, chunk
            if first is None and chunk["choices"]:
                first = time.monotonic() - started
            usage = chunk.get("usage") or usage
    assert first is not None and usage, "the stream ended without a token or usage"
    return TimedStream(first, time.monotonic() - started, usage)


async def record_token_gaps(response: httpx.Response, gaps: list[float]) -> None:
    """Reads a streamed answer to its end, appending to `gaps` the time between each two chunks that carry
    content: its inter-token latency (the role's chunk and the closing chunks carry no token)."""
    assert response.status_code == 200, await response.aread()
    last: float | None = None
    async for line in response.aiter_lines():
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line.removeprefix("data: "))
        assert "error" not in chunk, chunk
        if not any(choice["delta"].get("content") for choice in chunk["choices"]):
            continue
        now = time.monotonic()
        if last is not None:
            gaps.append(now - last)
        last = now
