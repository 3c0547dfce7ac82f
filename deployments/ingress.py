"""`OpenAIIngress`: the HTTP entry point. Routes each request to its model's engine deployment."""

from __future__ import annotations

from typing import AsyncGenerator

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import ServerOptions
from serve_app.http_api import create_http_app
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError


@serve.deployment
@serve.ingress()
class OpenAIIngress:
    """A `ModelBackend` over deployment handles; the FastAPI surface is built on each replica."""

    def __init__(self, server: ServerOptions, engines: dict[str, DeploymentHandle]) -> None:
        self._server = server
        self._engines = engines
        self._model_ids = list(engines)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(self, self._server.resolved_api_keys())

    def model_ids(self) -> list[str]:
        return self._model_ids

    async def chat(self, request: ChatCompletionRequest) -> bytes | OpenAIError:
        return await self._engines[request.model].chat.remote(request)

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncGenerator[bytes | OpenAIError, None]:
        frames = self._engines[request.model].chat_stream.options(stream=True).remote(request)
        try:
            async for item in frames:
                yield item
        finally:
            frames.cancel()  # no-op when finished; aborts generation when the client left early
