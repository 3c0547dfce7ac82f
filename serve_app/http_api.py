"""The OpenAI HTTP surface as a FastAPI app, over any `ModelBackend` (no Ray here).

The Serve ingress deployment supplies a backend that forwards to engine deployments; the bytes it gets
back are already the final JSON bodies and SSE frames, so this layer only picks status codes.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import AsyncGenerator, AsyncIterator, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError, invalid_request, model_not_found

logger = logging.getLogger("agent_serve.http")

OWNED_BY = "agent-serve"


class ModelBackend(Protocol):
    def model_ids(self) -> list[str]: ...

    async def chat(self, request: ChatCompletionRequest) -> bytes | OpenAIError: ...

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncGenerator[bytes | OpenAIError, None]:
        """First item: an error (nothing was sent yet) or the first frames; then only frames."""
        ...


def error_response(error: OpenAIError) -> Response:
    return Response(error.body(), status_code=error.status_code, media_type="application/json")


def create_http_app(backend: ModelBackend, api_keys: list[str]) -> FastAPI:
    app = FastAPI(title="agent-serve: OpenAI-compatible API", docs_url=None, redoc_url=None)
    started = int(time.time())
    accepted_keys = [key.encode() for key in api_keys]

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> Response:
        # OpenAI answers bad bodies with 400 and its envelope; FastAPI's default 422 breaks SDK clients.
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response(invalid_request(f"Invalid request: {param or 'body'}: {first['msg']}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(OpenAIError(exc.status_code, message, kind))

    @app.middleware("http")
    async def _authorize(request: Request, call_next):  # type: ignore[no-untyped-def]
        if accepted_keys and request.method != "OPTIONS":
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            # Compare against every key in constant time, so timing tells nothing about which almost matched.
            valid = scheme.lower() == "bearer" and any(
                [secrets.compare_digest(key.encode(), accepted) for accepted in accepted_keys]
            )
            if not valid:
                return error_response(
                    OpenAIError(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                                "invalid_request_error", None, "invalid_api_key")
                )
        return await call_next(request)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        cards = [{"id": m, "object": "model", "created": started, "owned_by": OWNED_BY} for m in backend.model_ids()]
        return JSONResponse({"object": "list", "data": cards})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        if body.model not in backend.model_ids():
            return error_response(model_not_found(body.model))
        if not body.stream:
            result = await backend.chat(body)
            if isinstance(result, OpenAIError):
                return error_response(result)
            return Response(result, media_type="application/json")
        frames = backend.chat_stream(body)
        first = await anext(frames)
        if isinstance(first, OpenAIError):
            await frames.aclose()
            return error_response(first)
        return StreamingResponse(
            _forward(first, frames),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return app


async def _forward(first: bytes, rest: AsyncGenerator[bytes | OpenAIError, None]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for frames in rest:
            assert isinstance(frames, bytes), "errors are only sent before the first frame"
            yield frames
    finally:
        await rest.aclose()  # the client went away: stop generation upstream
