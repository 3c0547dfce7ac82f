"""What chat and text completions share: sampling limits, the context check, collecting a whole answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from serve_app.engines.base import (
    Engine,
    FinishReason,
    GenerationDelta,
    GenerationRequest,
    SamplingOptions,
    TokenLogprob,
)
from serve_app.protocol.common import SamplingFields
from serve_app.protocol.errors import OpenAIError, invalid_request


def context_error(prompt_tokens: int, max_model_len: int, param: str) -> OpenAIError | None:
    """R2.5: a prompt that leaves no room to generate is refused, never truncated."""
    if prompt_tokens < max_model_len:
        return None
    return invalid_request(
        f"This model's maximum context length is {max_model_len} tokens. However, your request has "
        f"{prompt_tokens} prompt tokens, leaving no room for a completion. Please reduce the length of the input.",
        param=param,
        code="context_length_exceeded",
    )


def sampling_options(
    fields: SamplingFields, cap: int | None, room: int, logprobs: int | None, vocab_size: int
) -> SamplingOptions | OpenAIError:
    """Map OpenAI's sampling fields onto the engine's, faithfully; what cannot be honoured is a 400."""
    logit_bias: dict[int, float] = {}
    for key, bias in (fields.logit_bias or {}).items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            return invalid_request(
                f"logit_bias key {key!r} is not a token id of this model (0..{vocab_size - 1}).", param="logit_bias"
            )
        if not -100 <= bias <= 100:
            return invalid_request(
                f"logit_bias value {bias} for token {key} is outside [-100, 100].", param="logit_bias"
            )
        logit_bias[int(key)] = float(bias)
    max_tokens = min(cap or room, room)  # R2.4: a cap beyond the context is clamped, not refused
    if (fields.min_tokens or 0) > max_tokens:
        return invalid_request(
            f"min_tokens ({fields.min_tokens}) is more than the {max_tokens} tokens this request may generate.",
            param="min_tokens",
        )
    n, temperature, top_p, top_k = fields.n or 1, fields.temperature, fields.top_p, fields.top_k
    if top_p == 0:  # OpenAI: only the most likely token, greedy decoding; vLLM refuses a top_p of 0
        temperature, top_p = 0.0, None
    if temperature == 0 and n > 1:
        # OpenAI answers n greedy choices; vLLM refuses greedy decoding with n > 1. Sampling from the single
        # most likely token is the same argmax, in a form vLLM takes.
        temperature, top_k = 1.0, 1
    return SamplingOptions(
        max_tokens=max_tokens,
        n=n,
        temperature=temperature,
        top_p=top_p,
        stop=fields.stop_sequences,
        seed=fields.seed,
        presence_penalty=fields.presence_penalty or 0.0,
        frequency_penalty=fields.frequency_penalty or 0.0,
        logit_bias=logit_bias,
        top_k=top_k,
        min_p=fields.min_p,
        repetition_penalty=fields.repetition_penalty,
        min_tokens=fields.min_tokens or 0,
        ignore_eos=bool(fields.ignore_eos),
        logprobs=logprobs,
    )


@dataclass
class ChoiceResult:
    """One choice of a finished generation."""

    text: str = ""
    completion_tokens: int = 0
    finish_reason: FinishReason = "stop"
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerationResult:
    choices: list[ChoiceResult] = field(default_factory=list)
    cached_tokens: int = 0  # the prompt's tokens found in the engine's prefix cache

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


async def collect(deltas: AsyncIterator[GenerationDelta], n: int) -> GenerationResult:
    """Run a generation to the end; its n choices in index order."""
    result = GenerationResult([ChoiceResult() for _ in range(n)])
    async for delta in deltas:
        result.cached_tokens = max(result.cached_tokens, delta.cached_tokens)
        choice = result.choices[delta.index]
        choice.text += delta.text
        choice.completion_tokens = delta.completion_tokens
        choice.finish_reason = delta.finish_reason or choice.finish_reason
        if delta.logprobs is not None:
            choice.logprobs = (choice.logprobs or []) + delta.logprobs
    return result


async def collect_all(engine: Engine, requests: list[GenerationRequest]) -> list[GenerationResult]:
    """All generations of a request, concurrently. One that fails cancels its siblings (their engine
    requests are aborted) and the failure is raised: the answer is lost anyway, so nothing else runs for it."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(collect(engine.generate(r), r.sampling.n)) for r in requests]
    except ExceptionGroup as failed:  # the first failure is the story; the others are its consequence
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
