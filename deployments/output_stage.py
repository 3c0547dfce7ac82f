"""What the post-processing deployments share: a chat request planned by its model's engine deployment,
the engine's deltas streamed here, rendered into the final frames (the last place output changes, so
the ingress forwards them untouched). Each stage owns per-request state and scales on its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from opentelemetry.trace import Span
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.handles import UNAVAILABLE, by_value, streamed, unavailable_error
from deployments.logs import log_with_serve
from serve_app.chat_completions import ChatMeta, render_complete, render_stream
from serve_app.config import TracingOptions
from serve_app.engines.base import EngineLost, GenerationDelta
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.request_context import RequestContext
from serve_app.streaming import accepted_then_batched
from serve_app.structured_output import ResponseConstraint
from serve_app.tracing import Tracing
from serve_app.usage import UsageReport

logger = logging.getLogger("ray.serve")


class OutputStage:
    def __init__(
        self, engines: dict[str, DeploymentHandle], stream_batch_interval_s: float, tracing: TracingOptions
    ) -> None:
        log_with_serve()
        self._engines = {model_id: by_value(handle) for model_id, handle in engines.items()}
        self._batch_interval_s = stream_batch_interval_s
        self._tracing = Tracing.of(tracing)

    async def __del__(self) -> None:
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)  # sends the spans it holds

    def constraint(self, request: ChatCompletionRequest) -> ResponseConstraint | None | OpenAIError:
        """What the engine must enforce for this request's `response_format`, decided before generation."""
        return None

    def _hop(
        self, request: ChatCompletionRequest, context: RequestContext | None
    ) -> tuple[Span | None, RequestContext | None]:
        """This stage's span of the request (if traced), and the context the engine gets: its trace continues
        this span."""
        if self._tracing is None or context is None:
            return None, context
        span = self._tracing.start_hop(type(self).__name__, context.trace, **{"gen_ai.request.model": request.model})
        return span, replace(context, trace=self._tracing.next_hop(span, context.trace))

    async def _start(
        self, request: ChatCompletionRequest, context: RequestContext | None
    ) -> tuple[ChatMeta, DeploymentResponseGenerator[Any]] | OpenAIError:
        """The plan's `ChatMeta` and the engine's stream of deltas that follows it, or the error instead."""
        constraint = self.constraint(request)
        if isinstance(constraint, OpenAIError):
            return constraint
        engine = self._engines[request.model]
        stream = streamed(engine.generate_deltas.options(stream=True).remote(request, constraint, context))
        meta: ChatMeta | OpenAIError = await anext(stream)
        return meta if isinstance(meta, OpenAIError) else (meta, stream)

    async def generate(
        self, request: ChatCompletionRequest, context: RequestContext | None = None
    ) -> bytes | OpenAIError:
        span, context = self._hop(request, context)
        try:
            started = await self._start(request, context)
            if isinstance(started, OpenAIError):
                return started
            meta, stream = started
            return await render_complete(meta, _deltas(stream))
        except UNAVAILABLE as exc:  # the engine's replica went away: an error value, as every other
            logger.warning("request for %r: %s", request.model, exc)
            return unavailable_error(exc)
        finally:
            if span is not None:
                span.end()

    async def generate_stream(
        self, request: ChatCompletionRequest, context: RequestContext | None = None
    ) -> AsyncGenerator[bytes | OpenAIError | UsageReport, None]:
        span, context = self._hop(request, context)
        try:
            started = await self._start(request, context)
            if isinstance(started, OpenAIError):
                yield started
                return
            meta, stream = started
            async for frames in accepted_then_batched(render_stream(meta, _deltas(stream)), self._batch_interval_s):
                yield frames
        except UNAVAILABLE as exc:  # before the first frame, a 503 status; after it, an error event (R4.8)
            logger.warning("stream for %r: %s", request.model, exc)
            yield unavailable_error(exc)
        finally:
            if span is not None:
                span.end()


async def _deltas(stream: DeploymentResponseGenerator[Any]) -> AsyncIterator[GenerationDelta]:
    """The engine's deltas; its replica dying becomes the renderers' `EngineLost` (they know no Ray)."""
    try:
        async for batch in stream:
            for delta in batch:
                yield delta
    except UNAVAILABLE as exc:
        logger.warning("engine stream lost: %s", exc)
        raise EngineLost(str(exc)) from exc
    finally:
        stream.cancel()  # no-op when finished; aborts generation when the client left early
