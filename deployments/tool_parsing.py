"""`ToolParsing`: turns an engine's text into content and tool-call deltas, between engine and ingress.

It owns the per-request parser state and scales on its own. Only requests with tools come here; the
rest go from the ingress straight to the engine deployment. The frames it yields are final: the
ingress forwards them untouched.
"""

from __future__ import annotations

from typing import AsyncGenerator, AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serve_app.chat_completions import ChatMeta, render_complete, render_stream
from serve_app.engines.base import GenerationDelta
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.streaming import accepted_then_batched


@serve.deployment
class ToolParsing:
    def __init__(self, engines: dict[str, DeploymentHandle], stream_batch_interval_s: float) -> None:
        self._engines = engines
        self._batch_interval_s = stream_batch_interval_s

    async def _start(self, request: ChatCompletionRequest) -> tuple[ChatMeta | OpenAIError, DeploymentResponseGenerator]:
        stream = self._engines[request.model].generate_deltas.options(stream=True).remote(request)
        return await anext(stream), stream

    async def generate(self, request: ChatCompletionRequest) -> bytes | OpenAIError:
        meta, stream = await self._start(request)
        if isinstance(meta, OpenAIError):
            return meta
        return await render_complete(meta, _deltas(stream))

    async def generate_stream(self, request: ChatCompletionRequest) -> AsyncGenerator[bytes | OpenAIError, None]:
        meta, stream = await self._start(request)
        if isinstance(meta, OpenAIError):
            yield meta
            return
        async for frames in accepted_then_batched(render_stream(meta, _deltas(stream)), self._batch_interval_s):
            yield frames


async def _deltas(stream: DeploymentResponseGenerator) -> AsyncIterator[GenerationDelta]:
    try:
        async for batch in stream:
            for delta in batch:
                yield delta
    finally:
        stream.cancel()  # no-op when finished; aborts generation when the client left early
