"""Parse an SSE body the way strict clients do: only `data:` frames and comments, [DONE] last."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from serve_app.usage import UsageReport


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


async def read_frames(stream: AsyncIterator[bytes | UsageReport]) -> bytes:
    """A renderer's frames joined; asserts that its usage reports (which the ingress keeps) are the prompt's
    before any frame and the whole stream's last."""
    items = [item async for item in stream]
    prompt, whole = [item for item in items if isinstance(item, UsageReport)]
    assert not any(items[: items.index(prompt)]), "the prompt's report comes before any frame"
    assert items[-1] is whole and prompt == UsageReport(whole.prompt_tokens, 0), items
    return b"".join(item for item in items if isinstance(item, bytes))
