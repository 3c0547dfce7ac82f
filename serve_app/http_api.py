"""The OpenAI HTTP surface as a FastAPI app, over any `ModelBackend` (no Ray here).

The Serve ingress deployment supplies a backend that forwards to engine deployments; the bytes it gets
back are already the final JSON bodies and SSE frames, so this layer only picks status codes, and keeps
streams alive while the engine is silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app import sse
from serve_app.config import ModelTask, ServerOptions
from serve_app.keys import ANONYMOUS, Identity, KeyRingSource
from serve_app.metrics import MetricsSink, RequestMetrics
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.common import VLLM_SAMPLING_EXTENSIONS
from serve_app.protocol.completions import CompletionRequest
from serve_app.protocol.embeddings import EmbeddingRequest
from serve_app.protocol.errors import (
    CLIENT_CLOSED_REQUEST,
    OpenAIError,
    deadline_exceeded,
    internal_error,
    invalid_request,
    model_not_found,
    param_path,
    unavailable,
)
from serve_app.protocol.responses import ResponsesRequest
from serve_app.rate_limits import Ledger, LedgerClient, Limiter, LocalLedger, Refusal
from serve_app.request_context import RequestContext, TraceCarrier
from serve_app.responses import Translation, translate
from serve_app.responses_output import ResponsesFraming
from serve_app.routing import ModelCatalog
from serve_app.sse import ChatFraming
from serve_app.streaming import marking_silences
from serve_app.telemetry import RequestTelemetry
from serve_app.tracing import Tracing
from serve_app.usage import METERED_PATHS, UsageReport, request_usage

logger = logging.getLogger("agent_serve.http")

OWNED_BY = "agent-serve"
GenerationBody = ChatCompletionRequest | CompletionRequest | EmbeddingRequest


class ModelBackend(Protocol):
    catalog: ModelCatalog

    async def model_info(self, model_id: str) -> dict[str, Any]:
        """Extra facts about a model for `/v1/models` (its context length)."""
        ...

    async def generate(self, request: GenerationBody, context: RequestContext | None = None) -> bytes | OpenAIError:
        """The whole response body (or an error) for a request whose `model` is a model id; `context`: its
        caller and trace, for the engine's queue and the hops behind (`serve_app/request_context.py`)."""
        ...

    def generate_stream(
        self, request: GenerationBody, context: RequestContext | None = None
    ) -> AsyncGenerator[bytes | OpenAIError | UsageReport, None]:
        """First item: an error (nothing was sent yet) or the first frames; then only frames. Among them, never
        sent, `UsageReport`s: what the request cost so far, for its key's limits and the metrics."""
        ...


def error_response(error: OpenAIError) -> Response:
    headers = {}
    if error.retry_after_s is not None:  # both forms, as OpenAI sends them: SDKs read the precise one first
        headers = {
            "retry-after": str(math.ceil(error.retry_after_s)),
            "retry-after-ms": str(int(error.retry_after_s * 1000)),
        }
    return Response(error.body(), status_code=error.status_code, media_type="application/json", headers=headers)


def create_http_app(
    backend: ModelBackend,
    options: ServerOptions,
    ledger: LedgerClient | None = None,
    metrics: MetricsSink | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """The OpenAI HTTP surface over `backend`. Per-key limits are counted by `ledger`, shared by every
    ingress replica (by default, one in this process: right for a single replica and for tests). Each
    request is measured into `metrics` and traced by `tracing`, if given (`serve_app/telemetry.py`)."""
    app = FastAPI(title="agent-serve: OpenAI-compatible API", docs_url=None, redoc_url=None)
    started = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> Response:
        # OpenAI answers bad bodies with 400 and its envelope; FastAPI's default 422 breaks SDK clients.
        # Of a union's errors (one per member the value might have been), the deepest names the place: a
        # list of parts with a bad part fails as "not a string" too, one level up.
        deepest = max(exc.errors(), key=lambda error: len(error["loc"]))
        param = param_path(deepest["loc"])
        return error_response(invalid_request(f"Invalid request: {param or 'body'}: {deepest['msg']}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        code = "unknown_route" if exc.status_code == 404 else None
        return error_response(OpenAIError(exc.status_code, message, kind, None, code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Whatever the backend can tell apart (a replica that went away: 503) it returns as a value; what
        # reaches here is our bug. The envelope still, with an id to find the traceback by.
        return error_response(internal_error(_request_id(request), f"serving {request.method} {request.url.path}"))

    catalog = backend.catalog

    async def model_card(name: str, model_id: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": started, "owned_by": OWNED_BY}
        return card | await backend.model_info(model_id)

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        caller = _caller(request)
        names = [name for name in catalog.names() if caller.may_use(name, catalog.model_id(name) or name)]
        cards = await asyncio.gather(*(model_card(name, catalog.model_id(name) or name) for name in names))
        return JSONResponse({"object": "list", "data": list(cards)})

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str, request: Request) -> Response:
        model_id = catalog.model_id(model)
        if model_id is None or not _caller(request).may_use(model, model_id):
            return error_response(model_not_found(model))
        return JSONResponse(await model_card(model, model_id))

    async def serve(
        body: GenerationBody, task: ModelTask, request: Request, responses: Translation | None = None
    ) -> Response:
        """`body` answered by its model; for `/v1/responses`, `responses` is what it was translated from."""

        def refuse(error: OpenAIError) -> Response:  # an error names the field as the client sent it
            return error_response(responses.error(error) if responses is not None else error)

        model_id = catalog.resolve(body.model, task)
        if isinstance(model_id, OpenAIError):
            return refuse(model_id)
        if not _caller(request).may_use(body.model, model_id):  # as OpenAI: not told apart from no such model
            return refuse(model_not_found(body.model))
        request.state.model = model_id  # for the metrics: a model that exists, never a name a client made up
        sent = responses.request if responses is not None else body
        unknown = sorted(sent.model_extra or {})
        if options.strict_request_fields and (
            not_openai := unknown + sorted(VLLM_SAMPLING_EXTENSIONS & sent.model_fields_set)
        ):
            return refuse(invalid_request(f"Unrecognized request argument: {not_openai[0]}", param=not_openai[0]))
        if unknown:
            logger.info("ignoring unknown request fields: %s", ", ".join(unknown))
        if (fan_out := _fan_out_error(body, options)) is not None:
            return refuse(fan_out)
        # An alias is answered as the model it stands for (as OpenAI answers `gpt-4o` with its dated id).
        body = body if body.model == model_id else body.model_copy(update={"model": model_id})
        deadline = _Deadline.starting_now(options.request_deadline_s)
        if isinstance(body, EmbeddingRequest) or not body.stream:
            result = await _whole_answer(backend.generate(body, _context(request)), request, deadline)
            if isinstance(result, OpenAIError):
                return refuse(result)
            _note_usage(request, UsageReport.from_body(result))
            return Response(result, media_type="application/json")
        framing = (
            ResponsesFraming(responses.chat.responses.settings, model_id) if responses is not None else ChatFraming()
        )
        return await _stream_response(
            backend.generate_stream(body, _context(request)),
            _StreamSettings(options.keep_alive_interval_s, _request_id(request), deadline, framing),
            refuse,
            lambda report: _note_usage(request, report),
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await serve(body, "generate", request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await serve(body, "generate", request)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        return await serve(body, "embed", request)

    @app.post("/v1/responses")
    async def responses(body: ResponsesRequest, request: Request) -> Response:
        translation = translate(body)
        if isinstance(translation, OpenAIError):
            return error_response(translation)
        return await serve(translation.chat, "generate", request, translation)

    # Pure ASGI middlewares: Starlette's `@app.middleware("http")` would relay every streamed chunk through
    # an extra task and memory stream. The last added runs first: path, telemetry (so refusals count too),
    # CORS, key, then the body is read (only for a client with a key, within its limits), then the request
    # takes its place (only once its body is in).
    app.add_middleware(_Capacity, max_ongoing=options.ingress.max_ongoing_requests)
    app.add_middleware(_WholeBody, max_bytes=options.max_request_body_bytes, timeout_s=options.request_body_timeout_s)
    keys = KeyRingSource(
        options.resolved_api_keys(), options.keys_file, options.keys_env, options.keys_reload_interval_s, time.monotonic
    )
    limiter = Limiter(ledger or LocalLedger(Ledger(time.monotonic)), time.monotonic)
    app.add_middleware(_Limits, limiter=limiter)
    app.add_middleware(_Authorize, keys=keys)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-request-id", "traceparent"],
    )
    if metrics is not None or tracing is not None:
        request_metrics = RequestMetrics(metrics) if metrics is not None else None
        app.add_middleware(RequestTelemetry, metrics=request_metrics, tracing=tracing)
    app.add_middleware(_CanonicalRequest)
    return app


def _caller(request: Request) -> Identity:
    """Who sent the request (`_Authorize` put it there); with no keys configured, the anonymous caller."""
    return cast(Identity, getattr(request.state, "identity", ANONYMOUS))


def _note_usage(request: Request, report: UsageReport | None) -> None:
    """What the request cost so far, in the request's state (`serve_app/usage.py:request_usage`)."""
    if report is not None:
        request.state.usage = report


def _context(request: Request) -> RequestContext:
    """Who sent the request, and the trace context of the ingress's span of it (`RequestTelemetry` put it in
    the request's state), for the deployments behind."""
    caller = _caller(request)
    trace = cast(TraceCarrier | None, getattr(request.state, "trace", None))
    return RequestContext(caller.name, caller.priority, trace)


def _request_id(request: Request) -> str:
    """The client's `x-request-id`, or a new one: what an internal error's message and log line carry."""
    return request.headers.get("x-request-id") or f"req-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class _Deadline:
    """When a request must be over (`server.request_deadline_s` after it arrived)."""

    seconds: float
    at: float  # on the event loop's clock

    @classmethod
    def starting_now(cls, seconds: float | None) -> _Deadline | None:
        return None if seconds is None else cls(seconds, asyncio.get_running_loop().time() + seconds)

    def passed(self) -> bool:
        return asyncio.get_running_loop().time() > self.at

    def error(self) -> OpenAIError:
        return deadline_exceeded(self.seconds)


async def _whole_answer(
    call: Coroutine[Any, Any, bytes | OpenAIError], request: Request, deadline: _Deadline | None
) -> bytes | OpenAIError:
    """The backend's whole answer, unless the client leaves or the deadline passes first: then the call is
    cancelled, which Serve passes down the handles to the engine, which stops generating (issue #19). A
    streamed answer needs none of this: Starlette ends a stream whose client left."""
    answer = asyncio.ensure_future(call)
    left = asyncio.ensure_future(_client_left(request))
    try:
        timeout = None if deadline is None else deadline.at - asyncio.get_running_loop().time()
        await asyncio.wait({answer, left}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if answer.done():
        return answer.result()
    answer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await answer
    if left.done() and not left.cancelled():
        logger.info("request %s: the client left before its answer; generation stopped", _request_id(request))
        return CLIENT_LEFT
    assert deadline is not None
    return deadline.error()


async def _client_left(request: Request) -> None:
    """Returns when the client disconnects (the body was read whole before, so nothing else is waiting)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


CLIENT_LEFT = OpenAIError(
    CLIENT_CLOSED_REQUEST, "The client closed the connection before the answer.", "invalid_request_error"
)


@dataclass(frozen=True)
class _StreamSettings:
    keep_alive_s: float
    request_id: str
    deadline: _Deadline | None
    framing: StreamFraming  # what this layer's own frames look like: chat's, or a Responses stream's


class StreamFraming(Protocol):
    def saw(self, frame: bytes) -> None:
        """A frame that went out."""

    def ended(self, frame: bytes) -> bool:
        """Whether `frame` ends the stream: nothing may follow it."""

    def error(self, error: OpenAIError) -> bytes:
        """The frames that end a started stream with `error`."""


async def _stream_response(
    frames: AsyncGenerator[bytes | OpenAIError | UsageReport, None],
    settings: _StreamSettings,
    refuse: Callable[[OpenAIError], Response],
    on_usage: Callable[[UsageReport], None],
) -> Response:
    """Wait for the first item to pick the status; if the engine is slow to start, commit to a stream."""
    items = marking_silences(frames, settings.keep_alive_s)
    first = await anext(items)
    while isinstance(first, UsageReport):  # the prompt's, before any frame
        on_usage(first)
        first = await anext(items)
    if isinstance(first, OpenAIError):
        await items.aclose()
        return refuse(first)
    # A silence first means queued behind other requests: headers and keep-alives go out now (R4.1, R4.7)
    # and a later error becomes an error event (R4.8).
    return StreamingResponse(
        _sse(first, items, settings, on_usage),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _sse(
    first: bytes | OpenAIError | None,
    rest: AsyncGenerator[bytes | OpenAIError | UsageReport | None, None],
    settings: _StreamSettings,
    on_usage: Callable[[UsageReport], None],
) -> AsyncGenerator[bytes, None]:
    """Frames as they come; an SSE comment for each silence of the engine (clients time out at 300 s). A
    failure the backend did not turn into a value still ends the stream with an error event (and [DONE]:
    R4.8; `response.failed` in a Responses stream): a dropped connection is what clients handle worst. Past
    the deadline (checked at each frame and each silence) the stream ends with the deadline's error event.
    Nothing follows the stream's end (R4.1): a busy upstream may take a while to end after its last frame,
    and a keep-alive then would break the rule. The stream's `UsageReport`s go to `on_usage`."""
    framing = settings.framing
    ended = False

    def frame_of(item: bytes | OpenAIError | None) -> bytes:
        nonlocal ended
        if item is None:
            return sse.KEEP_ALIVE
        frame = framing.error(item) if isinstance(item, OpenAIError) else item
        framing.saw(frame)
        ended = framing.ended(frame)
        return frame

    try:
        yield frame_of(first)
        async for item in rest:
            if isinstance(item, UsageReport):
                on_usage(item)
                continue
            if ended:
                continue  # only the upstream's end is awaited now
            if settings.deadline is not None and settings.deadline.passed():
                yield framing.error(settings.deadline.error())
                return
            yield frame_of(item)
    except Exception:
        if not ended:
            yield framing.error(internal_error(settings.request_id, "streaming the response"))
    finally:
        await rest.aclose()  # stops generation upstream


def _fan_out_error(body: GenerationBody, options: ServerOptions) -> OpenAIError | None:
    """A request that fans out into more generations (or embeddings) than the server allows is refused at
    the door: one client's 5,000 prompts would otherwise hold an engine (and the connection) for minutes."""
    if isinstance(body, EmbeddingRequest):
        inputs, most = len(body.inputs()), options.max_embedding_inputs
        if inputs <= most:
            return None
        return invalid_request(f"input has {inputs} entries; this server allows at most {most}.", param="input")
    limit = options.max_generations_per_request
    prompts = len(body.prompts()) if isinstance(body, CompletionRequest) else 1
    n = body.n or 1
    if prompts * n <= limit:
        return None
    return invalid_request(
        f"This request asks for {prompts * n} generations ({prompts} prompts × n={n}); "
        f"this server allows at most {limit} per request.",
        param="n" if prompts == 1 else "prompt",
    )


class _CanonicalRequest:
    """Clients build URLs by concatenation: accept `/models`, `/v1//models` as `/v1/models`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        root = scope.get("root_path", "")
        path = scope["path"]
        local = path[len(root) :] if root and path.startswith(root) else path
        local = re.sub(r"/{2,}", "/", local)
        if local != "/v1" and not local.startswith("/v1/"):
            local = "/v1" + local
        canonical = root + local if root and path.startswith(root) else local
        await self.app(dict(scope, path=canonical, raw_path=canonical.encode()), receive, send)


class _WholeBody:
    """The request body is read here, whole, before anything else sees the request: one over the size limit
    is a 413 (declared or chunked), one that does not arrive within the time limit is a 408. Then the app
    reads it from memory as if from the socket, and later messages (a client's disconnect) pass through."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_error(send, self._too_large())
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except TimeoutError:
            error = OpenAIError(
                408,
                f"The request body did not arrive within {self.timeout_s:g} s.",
                "invalid_request_error",
                None,
                "request_timeout",
            )
            return await _send_error(send, error)
        if body is None:
            return await _send_error(send, self._too_large())
        replayed = False

        async def from_memory() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, from_memory, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it exceeds the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nothing to answer
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> OpenAIError:
        message = f"Request body larger than {self.max_bytes} bytes."
        return OpenAIError(413, message, "invalid_request_error", None, "request_too_large")


async def _send_error(send: Send, error: OpenAIError) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": error.body()})


class _Capacity:
    """At most `max_ongoing` requests (POST: generations and embeddings) in this ingress replica at once; one
    more is refused at once with a 503, `Retry-After` and OpenAI's body (issue #19): it would otherwise wait
    in Serve's queue without a bound. Listing models stays free."""

    def __init__(self, app: ASGIApp, max_ongoing: int) -> None:
        self.app = app
        self.max_ongoing = max_ongoing
        self.ongoing = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self.ongoing >= self.max_ongoing:
            full = unavailable(f"The server is at capacity: {self.ongoing} requests are in progress. Retry shortly.")
            return await error_response(full)(scope, receive, send)
        self.ongoing += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.ongoing -= 1


class _Limits:
    """Issue #20: a generation request of a caller with limits takes a permit and a slot of its key's and
    its team's (`serve_app/rate_limits.py`) or is refused with a 429 before its body is read; a response
    carries OpenAI's `x-ratelimit-*` headers; when the response (a stream too) ends, the slot is given back
    and the tokens its usage counts are charged."""

    def __init__(self, app: ASGIApp, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = scope.get("state", {}).get("identity")
        if scope["type"] != "http" or caller is None or scope["path"] not in METERED_PATHS:
            return await self.app(scope, receive, send)
        admission = await self.limiter.admit(caller)
        if isinstance(admission, Refusal):
            response = error_response(admission.error)
            response.headers.update(admission.headers)
            return await response(scope, receive, send)
        extra = [(name.encode(), value.encode()) for name, value in admission.headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            usage = request_usage(scope)
            self.limiter.release(admission, usage.total_tokens if usage is not None else 0)


class _Authorize:
    """R1.2: with keys configured, every request but a CORS preflight needs `Authorization: Bearer <key>`.
    The caller's identity (`serve_app/keys.py`) goes into the request's state for what follows: which
    models it may use, its limits, the names in logs and metrics."""

    def __init__(self, app: ASGIApp, keys: KeyRingSource) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ring = self.keys.current()
        if ring.open or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, key = header.partition(b" ")
        verdict = ring.identify(key.strip().decode("latin-1")) if scheme.lower() == b"bearer" else "unknown"
        if isinstance(verdict, Identity):
            scope.setdefault("state", {})["identity"] = verdict
            return await self.app(scope, receive, send)
        message = (
            "This API key has been revoked."
            if verdict == "revoked"
            else "Incorrect or missing API key: send `Authorization: Bearer <key>`."
        )
        error = OpenAIError(401, message, "invalid_request_error", None, "invalid_api_key")
        await error_response(error)(scope, receive, send)
