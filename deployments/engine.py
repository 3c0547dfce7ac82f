"""`LLMServer`: one deployment per model, owning its engine (vLLM or replay) and its `ModelService`."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from opentelemetry.trace import Span
from ray import serve

from deployments.logs import log_with_serve
from deployments.ray_metrics import RayMetrics
from serve_app.autoscaling import ENGINE_QUEUE_METRIC
from serve_app.chat_completions import ChatMeta
from serve_app.config import ModelConfig, TracingOptions
from serve_app.engines import create_engine
from serve_app.engines.base import GenerationDelta, GenerationRequest
from serve_app.metrics import ENGINE_METRICS, QUEUE_TIME
from serve_app.model_service import ModelService
from serve_app.model_source import prepare_model
from serve_app.prefix_routing import EngineReport, prompt_prefixes
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.completions import CompletionRequest
from serve_app.protocol.embeddings import EmbeddingRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.ray_settings import restore_normal_priority
from serve_app.request_context import NO_CONTEXT, RequestContext
from serve_app.streaming import accepted_then_batched, batched
from serve_app.structured_output import ResponseConstraint
from serve_app.tracing import Tracing
from serve_app.usage import UsageReport

logger = logging.getLogger("ray.serve")


class _Planned(Protocol):
    """A planned request: the generations it will ask of the engine."""

    @property
    def generations(self) -> Sequence[GenerationRequest]: ...


P = TypeVar("P", bound=_Planned)

ENGINE_WATCH_INTERVAL_S = 0.5
# After its engine died, how long a replica stays to answer what it carried (503s) before it exits.
LEAVE_GRACE_S = 1.0


@serve.deployment(health_check_period_s=10, health_check_timeout_s=30)
class LLMServer:
    # Serve awaits an async constructor (the engine starts before the replica takes requests); mypy knows no such thing.
    async def __init__(  # type: ignore[misc]
        self, model: ModelConfig, model_cache_dir: Path, stream_batch_interval_s: float, tracing: TracingOptions
    ) -> None:
        from transformers import AutoTokenizer

        log_with_serve()
        if (refused := restore_normal_priority()) is not None:
            logger.warning(refused)
        # The run command prepares models before starting; `serve run`/`serve deploy` prepare them here.
        model_path = await asyncio.to_thread(prepare_model, model.source, model_cache_dir, logger.info)
        tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, model_path)
        self._metrics = RayMetrics(ENGINE_METRICS)
        self._tracing = Tracing.of(tracing)
        self._model_id = model.id
        self._engine = create_engine(model, model_path, tokenizer, self._waited)
        logger.info("starting %s engine for model %r from %s", model.engine, model.id, model_path)
        await self._engine.start()
        self._service = ModelService(
            model.id, self._engine, tokenizer, model.tool_parser, model.reasoning_parser, model.task, model.compact_json
        )
        self._batch_interval_s = stream_batch_interval_s
        # Planning renders the chat template and tokenizes the prompt: ~40 ms for an agent's 10k tokens, nearly
        # all of it in the tokenizer's Rust core, which releases the GIL. On the event loop, which also carries
        # every running stream's tokens, each long prompt arriving would stall them all that long; on a thread
        # of its own it does not. One thread: requests are planned one at a time, in the order they arrive.
        self._planning = ThreadPoolExecutor(max_workers=1, thread_name_prefix="planning")
        self._watch = asyncio.create_task(self._leave_when_the_engine_dies())
        # The prefixes of the latest requests, reported to the prefix-affinity routers (docs/routing.md).
        self._report = EngineReport() if model.routing.router == "prefix_affinity" else None

    async def _leave_when_the_engine_dies(self) -> None:
        """A dead EngineCore does not come back, and until the next health check Serve would go on routing
        requests here (answered fast, with 503s, this replica looks the least busy). So the replica exits:
        Serve's routers drop it at once and its controller starts a replacement."""
        while not self._engine.lost():
            await asyncio.sleep(ENGINE_WATCH_INTERVAL_S)
        logger.error("the engine of model %r died; this replica exits so that Serve replaces it", self._model_id)
        await asyncio.sleep(LEAVE_GRACE_S)
        os._exit(1)  # Ray's exit_actor() works only inside an actor method call, not from a background task

    def _waited(self, seconds: float) -> None:
        """A request waited this long for room in the engine (`serve_app/engines/admission.py`)."""
        self._metrics.observe(QUEUE_TIME, seconds, {"model": self._model_id})
        if self._tracing is not None:
            self._tracing.queue_waited(seconds)

    @asynccontextmanager
    async def _planned(
        self,
        plan: Callable[..., P | OpenAIError],
        request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        *args: Any,
    ) -> AsyncIterator[P | OpenAIError]:
        """`plan(request, *args)`, off the event loop (see `_planning`), then, back on it in the same step, the
        plan's places in the engine's admission, held until the request is served (or a refusal: full).
        The request's prompt is in this replica's prefix cache from now on: its prefixes are noted for the
        routers."""
        if self._report is not None:
            self._report.note(prompt_prefixes(request), time.monotonic())
        planned = await asyncio.get_running_loop().run_in_executor(self._planning, plan, request, *args)
        if isinstance(planned, OpenAIError):
            yield planned
            return
        with self._engine.hold(planned.generations) as full:
            yield planned if full is None else full

    def _hop(
        self, request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest, context: RequestContext | None
    ) -> Span | None:
        """This replica's span of the request, if the ingress traced it (`serve_app/tracing.py`)."""
        if self._tracing is None or context is None:
            return None
        model = {"gen_ai.request.model": request.model}
        return self._tracing.start_hop(f"LLMServer:{self._model_id}", context.trace, **model)

    async def generate(
        self,
        request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        context: RequestContext | None = None,
    ) -> bytes | OpenAIError:
        span = self._hop(request, context)
        try:
            async with self._planned(self._service.plan, request, context or NO_CONTEXT) as plan:
                return plan if isinstance(plan, OpenAIError) else await plan.complete()
        finally:
            if span is not None:
                span.end()

    async def generate_stream(
        self, request: ChatCompletionRequest | CompletionRequest, context: RequestContext | None = None
    ) -> AsyncGenerator[bytes | OpenAIError | UsageReport, None]:
        span = self._hop(request, context)
        try:
            async with self._planned(self._service.plan, request, context or NO_CONTEXT) as plan:
                if isinstance(plan, OpenAIError):
                    yield plan
                    return
                first = True
                async for frames in accepted_then_batched(plan.stream(), self._batch_interval_s):
                    if first and span is not None and frames and isinstance(frames, bytes):  # not the accepted b""
                        span.add_event("first_token")
                        first = False
                    yield frames
        finally:
            if span is not None:
                span.end()

    async def generate_deltas(
        self,
        request: ChatCompletionRequest,
        constraint: ResponseConstraint | None,
        context: RequestContext | None = None,
    ) -> AsyncGenerator[ChatMeta | OpenAIError | list[GenerationDelta], None]:
        """For the post-processing deployments: the plan's `ChatMeta` (or an error), then the engine's deltas.
        `constraint` is the response format the structured-output deployment checked and compiled."""
        span = self._hop(request, context)
        try:
            async with self._planned(self._service.chat.plan, request, constraint, context or NO_CONTEXT) as planned:
                if isinstance(planned, OpenAIError):
                    yield planned
                    return
                yield planned.meta
                first = True
                async for deltas in batched(self._engine.generate(planned.generation), self._batch_interval_s):
                    if first and span is not None:
                        span.add_event("first_token")
                    first = False
                    yield deltas
        finally:
            if span is not None:
                span.end()

    def model_info(self) -> dict[str, Any]:
        return self._service.model_info()

    async def record_routing_stats(self) -> dict[str, Any]:
        """Serve calls this on each replica every `HELD_KEYS_REPORT_PERIOD_S` and hands what changed to every
        router of this deployment (`deployments/prefix_router.py`). Async so that it runs on the replica's event
        loop, where `_planned` notes the keys, also when Serve runs sync methods in a thread pool
        (`RAY_SERVE_RUN_SYNC_IN_THREADPOOL`): `EngineReport` is not thread-safe."""
        return {} if self._report is None else self._report.stats(time.monotonic())

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve calls this on each replica every `metrics_interval_s`; `engine_queue_policy` reads it."""
        return {ENGINE_QUEUE_METRIC: self._engine.num_unfinished_requests()}

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def __del__(self) -> None:
        if hasattr(self, "_planning"):
            self._planning.shutdown(wait=False)
        try:
            if hasattr(self, "_engine"):  # not when scaled down (or deleted) while still starting
                if hasattr(self, "_watch"):  # not when the engine failed to start
                    self._watch.cancel()  # an engine shut down on purpose is no engine lost
                await self._engine.shutdown()
        finally:
            if (tracing := getattr(self, "_tracing", None)) is not None:
                await asyncio.to_thread(tracing.shutdown)  # sends the spans it holds
