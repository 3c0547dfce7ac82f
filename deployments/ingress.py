"""`OpenAIIngress`: the HTTP entry point. Routes each request to its model's engine deployment."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any, cast

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.handles import UNAVAILABLE, by_value, streamed, unavailable_error
from deployments.limits_ledger import HandleLedger
from deployments.logs import log_with_serve
from deployments.ray_metrics import RayMetrics
from serve_app.config import ServerOptions
from serve_app.http_api import GenerationBody, create_http_app
from serve_app.metrics import INGRESS_METRICS
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.request_context import RequestContext
from serve_app.routing import ModelCatalog, needs_structured_output, needs_tool_parsing
from serve_app.tracing import Tracing
from serve_app.usage import UsageReport

logger = logging.getLogger("ray.serve")


@serve.deployment
@serve.ingress()
class OpenAIIngress:
    """A `ModelBackend` over deployment handles; the FastAPI surface is built on each replica."""

    def __init__(
        self,
        server: ServerOptions,
        catalog: ModelCatalog,
        engines: dict[str, DeploymentHandle],
        tool_parsing: DeploymentHandle,
        structured_output: DeploymentHandle,
        limits_ledger: DeploymentHandle,
    ) -> None:
        log_with_serve()
        self._server = server
        self.catalog = catalog
        self._engines = {model_id: by_value(handle) for model_id, handle in engines.items()}
        self._tool_parsing = by_value(tool_parsing)
        self._structured_output = by_value(structured_output)
        self._model_info: dict[str, dict[str, Any]] = {}
        self._limits_ledger = HandleLedger(limits_ledger)
        self._metrics = RayMetrics(INGRESS_METRICS)
        self._tracing = Tracing.of(server.tracing)

    async def __del__(self) -> None:
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)  # sends the spans it holds

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(self, self._server, self._limits_ledger, self._metrics, self._tracing)

    async def model_info(self, model_id: str) -> dict[str, Any]:
        if (length := self.catalog.context_lengths.get(model_id)) is not None:
            return {"max_model_len": length}
        if model_id in self.catalog.may_scale_to_zero:
            return {}  # asking would start a replica and wait for it: listing must stay instant (R1.5)
        if model_id not in self._model_info:  # fixed for the life of the deployment: ask once
            self._model_info[model_id] = await self._engines[model_id].model_info.remote()
        return self._model_info[model_id]

    def _route(self, request: GenerationBody) -> DeploymentHandle:
        """Post-processing only for the requests that need it: a response format goes through structured
        output (which parses tool calls too), tools through tool parsing; the rest skip both hops."""
        if isinstance(request, ChatCompletionRequest):
            if needs_structured_output(request):
                return self._structured_output
            if needs_tool_parsing(request):
                return self._tool_parsing
        return self._engines[request.model]

    async def generate(self, request: GenerationBody, context: RequestContext | None = None) -> bytes | OpenAIError:
        try:
            return cast(bytes | OpenAIError, await self._route(request).generate.remote(request, context))
        except UNAVAILABLE as exc:
            logger.warning("request for %r: %s", request.model, exc)
            return unavailable_error(exc)

    async def generate_stream(
        self, request: GenerationBody, context: RequestContext | None = None
    ) -> AsyncGenerator[bytes | OpenAIError | UsageReport, None]:
        frames = streamed(self._route(request).generate_stream.options(stream=True).remote(request, context))
        try:
            async for item in frames:
                yield item
        except UNAVAILABLE as exc:  # first: a 503 status; once the stream started: an error event (R4.8)
            logger.warning("stream for %r: %s", request.model, exc)
            yield unavailable_error(exc)
        finally:
            frames.cancel()  # no-op when finished; aborts generation when the client left early
