"""Server-sent events framing for OpenAI streams: `data: <json>\\n\\n` frames ending with `data: [DONE]`."""

from __future__ import annotations

from serve_app.protocol.errors import OpenAIError

DONE = b"data: [DONE]\n\n"
KEEP_ALIVE = b": keep-alive\n\n"


def frame(json_text: str) -> bytes:
    return b"data: " + json_text.encode() + b"\n\n"


def error_frame(error: OpenAIError) -> bytes:
    """A failure after the stream started: an `error` event, then [DONE], never a dropped socket (R4.8)."""
    return b"data: " + error.body() + b"\n\n" + DONE


class ChatFraming:
    """What the HTTP layer adds to a chat or completions stream itself: an error event and [DONE] (R4.8)."""

    def saw(self, frame: bytes) -> None:
        return None

    def ended(self, frame: bytes) -> bool:
        return frame.endswith(DONE)

    def error(self, error: OpenAIError) -> bytes:
        return error_frame(error)
