"""Each generation request observed once on its way through the ingress, for the metrics and the traces
(issue #20): `RequestTelemetry` is the ASGI middleware, outside every other one so that refusals (401, 413,
429, 503) are observed too; what it saw is an `Observation`, which `serve_app/metrics.py` records and
`serve_app/tracing.py` turns into the request's span. The model and the usage come from the request's
state, where `http_api` puts them.

Pure: no Ray.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app import sse
from serve_app.keys import ANONYMOUS, Identity
from serve_app.metrics import RequestMetrics
from serve_app.protocol.errors import CLIENT_CLOSED_REQUEST
from serve_app.responses_output import failed_error_code
from serve_app.tracing import Tracing
from serve_app.usage import METERED_PATHS, UsageReport, request_usage

_ERROR_EVENT = b'data: {"error": '  # as `OpenAIError.body()` writes it
# A finish reason in a body or a frame, or how a `response` object ended; within strings quotes are escaped,
# so text cannot look like one.
_FINISH_REASON = re.compile(
    rb'"finish_reason":"(\w+)"|"object":"response","created_at":\d+,"status":"(completed|incomplete|failed)"'
)


@dataclass
class Observation:
    """What one request showed: filled as its answer goes out, completed when it ends."""

    route: str
    arrived: float
    status: int = 0  # 0: no answer was started
    first_token_at: float | None = None  # streams: the first frame that is not an error event
    ended: float = 0.0
    caller: Identity = ANONYMOUS
    model: str = ""  # a served model's id; "" before one was resolved
    usage: UsageReport | None = None
    finish_reasons: tuple[str, ...] = ()  # as the answer's body or frames say them; only while tracing
    error_body: bytes = b""
    last_frame: bytes = b""

    def error(self) -> tuple[str, str] | None:
        """The code and type of the answer's error (its body's, or a failed stream's error event's); none for
        a request whose client left (nobody read an answer)."""
        if self.status == CLIENT_CLOSED_REQUEST:
            return None
        if self.status >= 400:
            body = self.error_body
        elif (code := failed_error_code(self.last_frame)) is not None:  # a Responses stream
            return code, "server_error"
        elif (at := self.last_frame.rfind(_ERROR_EVENT)) >= 0 and self.last_frame.endswith(sse.DONE):
            body = self.last_frame[at + len(b"data: ") : -len(sse.DONE)].strip()
        else:
            return None
        try:
            error = json.loads(body)["error"]
            return str(error.get("code") or error.get("type") or self.status), str(error.get("type", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            return str(self.status), ""


class RequestTelemetry:
    def __init__(
        self,
        app: ASGIApp,
        metrics: RequestMetrics | None,
        tracing: Tracing | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or route not in METERED_PATHS:
            return await self.app(scope, receive, send)
        seen = Observation(route, self.clock())
        span = self.tracing.start_request(route, scope["headers"]) if self.tracing is not None else None
        extra_headers: list[tuple[bytes, bytes]] = []
        if span is not None and self.tracing is not None:
            carrier = self.tracing.carrier(span)
            scope.setdefault("state", {})["trace"] = carrier  # what the hops behind continue
            if span.get_span_context().trace_flags.sampled:  # a trace the client can find
                extra_headers = [(name.encode(), value.encode()) for name, value in carrier.items()]

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
                if extra_headers:  # the client learns the trace of its request (W3C `traceparent`)
                    message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
            elif message["type"] == "http.response.body" and (body := message.get("body", b"")):
                if seen.status >= 400:
                    seen.error_body += body
                else:
                    if body.startswith((b"data: ", b"event: ")):  # a frame (not a whole body or a keep-alive)
                        if seen.first_token_at is None and not _failed(body):
                            seen.first_token_at = self.clock()
                        seen.last_frame = body
                    if span is not None:
                        found = _FINISH_REASON.findall(body)
                        seen.finish_reasons += tuple((chat or response).decode() for chat, response in found)
            await send(message)

        if self.metrics is not None:
            self.metrics.started(route)
        try:
            await self.app(scope, receive, watching)
        finally:
            state = scope.get("state", {})
            seen.ended = self.clock()
            seen.caller = state.get("identity", ANONYMOUS)
            seen.model = state.get("model", "")
            seen.usage = request_usage(scope)
            if self.metrics is not None:
                self.metrics.finished(seen)
            if span is not None and self.tracing is not None:
                self.tracing.end_request(span, seen)


def _failed(frame: bytes) -> bool:
    """A stream's frame that says it failed instead of answering: not a first token."""
    return frame.startswith(_ERROR_EVENT) or failed_error_code(frame) is not None
