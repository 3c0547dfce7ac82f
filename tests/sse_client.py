"""Parse an SSE body the way strict clients do: only `data:` frames and comments, [DONE] last."""

from __future__ import annotations

import json
from typing import Any


def parse_sse(body: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a stream; asserts the framing rules of R4.1 on the way."""
    text = body.decode()
    assert text.endswith("data: [DONE]\n\n"), f"stream must end with [DONE]: {text[-200:]!r}"
    chunks = []
    for event in text.split("\n\n")[:-1]:
        if event.startswith(":"):
            continue  # a comment (keep-alive)
        assert event.startswith("data: "), f"not a data frame: {event[:200]!r}"
        payload = event.removeprefix("data: ")
        if payload == "[DONE]":
            break
        chunks.append(json.loads(payload))
    return chunks
