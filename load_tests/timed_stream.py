"""One streamed chat request, timed: what the benchmarks that measure an agent's wait read of a stream."""

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
