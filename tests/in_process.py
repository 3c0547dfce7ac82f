"""The ingress's job without Ray, for tests of the HTTP surface: the same `ModelService` the engine
deployment runs, over a real (replay) engine in this process."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from serve_app.engines.base import Engine
from serve_app.http_api import GenerationBody
from serve_app.model_service import ModelService
from serve_app.protocol.errors import OpenAIError
from serve_app.reasoning import ReasoningFormat
from serve_app.request_context import NO_CONTEXT, RequestContext
from serve_app.routing import ModelCatalog
from serve_app.usage import UsageReport


class InProcessBackend:
    def __init__(
        self, model_id: str, engine: Engine, tokenizer: Any, reasoning_parser: ReasoningFormat | None = None
    ) -> None:
        self.catalog = ModelCatalog({model_id: "generate"}, {})
        self.service = ModelService(model_id, engine, tokenizer, reasoning_parser=reasoning_parser)

    async def model_info(self, model_id: str) -> dict[str, Any]:
        return self.service.model_info()

    async def generate(self, request: GenerationBody, context: RequestContext | None = None) -> bytes | OpenAIError:
        plan = self.service.plan(request, context or NO_CONTEXT)
        if isinstance(plan, OpenAIError):
            return plan
        with self.service.engine.hold(plan.generations) as full:
            return full if full is not None else await plan.complete()

    async def generate_stream(
        self, request: GenerationBody, context: RequestContext | None = None
    ) -> AsyncGenerator[bytes | OpenAIError | UsageReport, None]:
        plan = self.service.plan(request, context or NO_CONTEXT)
        if isinstance(plan, OpenAIError):
            yield plan
            return
        with self.service.engine.hold(plan.generations) as full:
            if full is not None:
                yield full
                return
            async for frame in plan.stream():
                yield frame


class BreakingBackend(InProcessBackend):
    """A stream that breaks after its first item, in a way no layer turned into a value: a replica lost
    mid-stream, as the ingress sees it at worst (R4.8)."""

    async def generate_stream(
        self, request: GenerationBody, context: RequestContext | None = None
    ) -> AsyncGenerator[bytes | OpenAIError | UsageReport, None]:
        frames = super().generate_stream(request, context)
        yield await anext(frames)
        raise ConnectionResetError("the engine replica went away")
