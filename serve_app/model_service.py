"""One model's endpoints over one engine (chat and text completions, or embeddings): what an engine
deployment serves. Which model serves which endpoint is decided before a request gets here (`routing`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from serve_app.chat_completions import ChatCompletions
from serve_app.completions import TextCompletions
from serve_app.config import ModelTask
from serve_app.embeddings import Embeddings
from serve_app.engines.base import EmbeddingEngine, Engine, GenerationRequest
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.completions import CompletionRequest
from serve_app.protocol.embeddings import EmbeddingRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.reasoning import ReasoningFormat
from serve_app.request_context import NO_CONTEXT, RequestContext
from serve_app.structured_output import check_constraints
from serve_app.usage import UsageReport


class Endpoint(Protocol):
    """Every endpoint plans a request, then runs it whole; the generating ones can also stream it."""

    def plan(self, request: Any) -> Any: ...

    async def complete(self, planned: Any) -> bytes | OpenAIError: ...


class StreamingEndpoint(Endpoint, Protocol):
    def stream(self, planned: Any) -> AsyncIterator[bytes | UsageReport]: ...


@dataclass(frozen=True)
class Plan:
    """A validated request bound to its endpoint, ready to run whole or streamed, and the generations it
    will ask of the engine (none for embeddings), whose places its engine holds for it (`Engine.hold`)."""

    endpoint: Endpoint
    planned: Any
    generations: Sequence[GenerationRequest]

    async def complete(self) -> bytes | OpenAIError:
        return await self.endpoint.complete(self.planned)

    def stream(self) -> AsyncIterator[bytes | UsageReport]:
        """The frames, and the stream's `UsageReport`s (`serve_app/usage.py`)."""
        return cast(StreamingEndpoint, self.endpoint).stream(self.planned)  # embedding requests never stream


class ModelService:
    def __init__(
        self,
        model_id: str,
        engine: Engine,
        tokenizer: Any,
        tool_parser: str = "hermes",
        reasoning_parser: ReasoningFormat | None = None,
        task: ModelTask = "generate",
        compact_json: bool = True,
    ) -> None:
        self.engine = engine
        self._endpoints: dict[type, Endpoint]
        if task == "embed":
            self._endpoints = {EmbeddingRequest: Embeddings(model_id, cast(EmbeddingEngine, engine), tokenizer)}
            return
        self.chat = ChatCompletions(model_id, engine, tokenizer, tool_parser, reasoning_parser, compact_json)
        self.completions = TextCompletions(model_id, engine, tokenizer)
        self._endpoints = {ChatCompletionRequest: self.chat, CompletionRequest: self.completions}

    def plan(
        self,
        request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        context: RequestContext = NO_CONTEXT,
    ) -> Plan | OpenAIError:
        """A request served whole by this model (no post-processing deployment in front of it)."""
        # By kind: a `/v1/responses` request is a chat request (`ChatFromResponses`).
        endpoint = next(endpoint for kind, endpoint in self._endpoints.items() if isinstance(request, kind))
        planned: Any
        if isinstance(request, ChatCompletionRequest):
            constraint = check_constraints(request)
            if isinstance(constraint, OpenAIError):
                return constraint
            planned = self.chat.plan(request, constraint, context)
        elif isinstance(request, CompletionRequest):
            planned = self.completions.plan(request, context)
        else:
            planned = endpoint.plan(request)
        if isinstance(planned, OpenAIError):
            return planned
        return Plan(endpoint, planned, () if isinstance(request, EmbeddingRequest) else planned.generations)

    def model_info(self) -> dict[str, Any]:
        return {"max_model_len": self.engine.max_model_len}
