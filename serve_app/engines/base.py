"""The engine protocol: what the serving layer needs from an engine, so vLLM and the replay engine plug in.

Everything that crosses it is plain data. The prompt is already rendered and tokenized by the caller
(who needs the token count anyway, to check the context window), so engines only generate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from serve_app.protocol.errors import OpenAIError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    # How many alternatives to report per generated token; None = no logprobs at all.
    logprobs: int | None = None
    # Constrained decoding: the output must be JSON valid against this schema, or follow this
    # structural tag (free text, constrained from a trigger string on; vLLM/xgrammar's JSON format).
    json_schema: dict[str, Any] | None = None
    structural_tag: str | None = None
    # Formats whose markup is special tokens (harmony) need them in the text.
    skip_special_tokens: bool = True


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    # The conversation the prompt was rendered from; engines that script answers (replay) match on it.
    messages: list[dict[str, Any]] = field(default_factory=list)
    # Who asked (an API key's name) and its priority: its turn when the engine is busy (admission.py).
    caller: str = "anonymous"
    priority: int = 0


@dataclass(frozen=True)
class TokenChoice:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log probability and the most likely alternatives."""

    chosen: TokenChoice
    top: list[TokenChoice]


@dataclass(frozen=True)
class GenerationDelta:
    """New text of one choice since its previous delta, with that choice's running token count."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    # The prompt's tokens the engine found in its prefix cache (the same on every delta of a request).
    cached_tokens: int = 0


class EngineLost(Exception):
    """Raised by a stream of deltas whose engine went away mid-generation (its replica died): a lack of
    capacity, not a bug, so the answer becomes a 503 (or an error event) the client retries."""


class Engine(ABC):
    """One model's generator. `start` may take long (weights, warm-up); `generate` streams deltas.

    Closing the iterator returned by `generate` early (client gone) must abort the request in the engine.
    """

    @abstractmethod
    async def start(self) -> None: ...

    @property
    @abstractmethod
    def max_model_len(self) -> int: ...

    def refusal(self, request: GenerationRequest) -> OpenAIError | None:
        """What the engine would refuse about this request, said when the request is planned: before a
        stream is committed and before it waits for room."""
        return None

    @contextmanager
    def hold(self, generations: Sequence[GenerationRequest]) -> Iterator[OpenAIError | None]:
        """The places of a planned request's generations, taken for as long as the request is served, or
        "full, retry" (`admission.py`). An engine without admission has no places to take."""
        yield None

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]: ...

    @abstractmethod
    def num_unfinished_requests(self) -> int:
        """Requests waiting or running in the engine: its queue depth."""

    @abstractmethod
    async def check_health(self) -> None:
        """Raise if the engine can no longer serve."""

    def lost(self) -> bool:
        """Whether the engine's own process died: nothing more can be served, now or later."""
        return False

    async def shutdown(self) -> None:
        return None


@dataclass(frozen=True)
class EmbeddingShape:
    size: int  # the model's own number of dimensions
    # Matryoshka models give valid embeddings of fewer dimensions (OpenAI's `dimensions`); some list the sizes.
    matryoshka: bool = False
    allowed_dimensions: tuple[int, ...] | None = None


class EmbeddingEngine(Protocol):
    """An engine running an embedding (pooling) model: token ids in, one vector per prompt out."""

    @property
    def max_model_len(self) -> int: ...

    def embedding_shape(self) -> EmbeddingShape: ...

    async def embed(self, request_id: str, prompts: list[list[int]], dimensions: int | None) -> list[list[float]]: ...


def token_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))
