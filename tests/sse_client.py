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


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """The events of a Responses stream; asserts its framing (R9.3) on the way: each frame is
    `event: <type>` + `data: <json>` of that type, numbered from 0 up, comments aside, no [DONE]."""
    text = body.decode()
    events: list[dict[str, Any]] = []
    for frame in text.split("\n\n")[:-1]:
        if frame.startswith(":"):
            continue  # a comment (keep-alive)
        kind, _, data = frame.partition("\n")
        assert kind.startswith("event: ") and data.startswith("data: "), f"not an event frame: {frame[:200]!r}"
        event = json.loads(data.removeprefix("data: "))
        assert event["type"] == kind.removeprefix("event: "), frame[:200]
        assert event["sequence_number"] == len(events), f"sequence_number {event['sequence_number']} at {len(events)}"
        events.append(event)
    assert text.endswith("\n\n") and "[DONE]" not in text.rsplit("\n\n", 2)[-2], text[-200:]
    return events
