"""Text completions for one model: prompts (text or token ids) -> engine -> `text_completion` objects.

Several prompts run concurrently; choice `index` is `prompt_index * n + i`, as OpenAI numbers them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from serve_app import sse
from serve_app.engines.base import Engine, EngineLost, GenerationRequest, TokenLogprob
from serve_app.generation import collect_all, context_error, sampling_options
from serve_app.protocol.common import FinishReason, Usage, valid_text
from serve_app.protocol.completions import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from serve_app.protocol.errors import OpenAIError, internal_error, invalid_request, replica_lost
from serve_app.request_context import NO_CONTEXT, RequestContext
from serve_app.streaming import merged
from serve_app.usage import UsageReport

SYSTEM_FINGERPRINT = "agent-serve"


@dataclass(frozen=True)
class PlannedCompletion:
    request: CompletionRequest
    id: str
    created: int
    generations: list[GenerationRequest]
    prompt_texts: list[str]  # for echo

    @property
    def prompt_tokens(self) -> int:
        return sum(len(g.prompt_token_ids) for g in self.generations)


class TextCompletions:
    def __init__(self, model_id: str, engine: Engine, tokenizer: Any) -> None:
        self.model_id = model_id
        self.engine = engine
        self.tokenizer = tokenizer

    def plan(self, request: CompletionRequest, context: RequestContext = NO_CONTEXT) -> PlannedCompletion | OpenAIError:
        if request.suffix:
            return invalid_request("suffix (fill-in-the-middle) is not supported by this server.", param="suffix")
        if request.best_of not in (None, request.n):
            return invalid_request("best_of is not supported; use n.", param="best_of")
        if request.echo and request.logprobs is not None:
            return invalid_request("echo together with logprobs (prompt logprobs) is not supported.", param="echo")
        if request.stream_options is not None and not request.stream:
            return invalid_request("stream_options is only allowed when stream is true.", param="stream_options")
        prompts = request.prompts()
        if not prompts:
            return invalid_request("prompt must not be empty.", param="prompt")
        request_id = f"cmpl-{uuid.uuid4().hex}"
        generations, texts = [], []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                prompt = valid_text(prompt)
                ids: list[int] = self.tokenizer.encode(prompt, add_special_tokens=False)
                texts.append(prompt)
            else:
                if any(not 0 <= t < len(self.tokenizer) for t in prompt):
                    return invalid_request(f"prompt {i} has token ids outside the vocabulary.", param="prompt")
                ids = list(prompt)
                texts.append(self.tokenizer.decode(ids))
            if not ids:
                return invalid_request(f"prompt {i} is empty.", param="prompt")
            if (error := context_error(len(ids), self.engine.max_model_len, "prompt")) is not None:
                return error
            sampling = sampling_options(
                request,
                cap=request.max_tokens,
                room=self.engine.max_model_len - len(ids),
                logprobs=request.logprobs,
                vocab_size=len(self.tokenizer),
            )
            if isinstance(sampling, OpenAIError):
                return sampling
            # A scripted engine matches on messages; a text prompt reads as the user's last message.
            as_message = [{"role": "user", "content": texts[-1]}]
            generation = GenerationRequest(
                f"{request_id}-{i}", ids, sampling, as_message, context.caller, context.priority
            )
            if (refused := self.engine.refusal(generation)) is not None:
                return refused
            generations.append(generation)
        return PlannedCompletion(request, request_id, int(time.time()), generations, texts)

    def _choice_index(self, planned: PlannedCompletion, prompt_index: int, choice_index: int) -> int:
        return prompt_index * (planned.request.n or 1) + choice_index

    async def complete(self, planned: PlannedCompletion) -> bytes | OpenAIError:
        try:
            results = await collect_all(self.engine, planned.generations)
        except EngineLost:
            return replica_lost()
        except Exception:
            return internal_error(planned.id, "generating")
        choices = [
            CompletionChoice(
                index=self._choice_index(planned, p, c),
                text=(planned.prompt_texts[p] if planned.request.echo else "") + choice.text,
                logprobs=_legacy_logprobs(choice.logprobs, 0),
                finish_reason=choice.finish_reason,
            )
            for p, result in enumerate(results)
            for c, choice in enumerate(result.choices)
        ]
        cached = sum(r.cached_tokens for r in results)
        usage = Usage.of(planned.prompt_tokens, sum(r.completion_tokens for r in results), cached_tokens=cached)
        return self._object(planned, choices, usage).model_dump_json().encode()

    async def stream(self, planned: PlannedCompletion) -> AsyncIterator[bytes | UsageReport]:
        """The frames, and the `UsageReport`s the ingress keeps: the prompt's first, the whole stream's last
        (also after an error event; not when the consumer closes the stream early)."""
        yield UsageReport(planned.prompt_tokens, 0)
        tokens: dict[int, int] = {}  # completion tokens so far, by choice index
        cached: dict[int, int] = {}  # cached prompt tokens, by prompt index
        frames = self._frames(planned, tokens, cached)
        try:
            async for frame in frames:
                yield frame
        finally:
            await frames.aclose()
        yield UsageReport(planned.prompt_tokens, sum(tokens.values()), sum(cached.values()))

    async def _frames(
        self, planned: PlannedCompletion, tokens: dict[int, int], cached: dict[int, int]
    ) -> AsyncGenerator[bytes, None]:
        n = planned.request.n or 1
        offsets: dict[int, int] = {}
        echoed: set[int] = set()
        finished: set[int] = set()
        streams = [self.engine.generate(g) for g in planned.generations]
        try:
            async for prompt_index, delta in merged(streams):
                index = self._choice_index(planned, prompt_index, delta.index)
                tokens[index] = delta.completion_tokens
                cached[prompt_index] = delta.cached_tokens
                text = delta.text
                if planned.request.echo and index not in echoed:
                    text = planned.prompt_texts[prompt_index] + text
                    echoed.add(index)
                logprobs = _legacy_logprobs(delta.logprobs, offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + len(delta.text)
                if delta.finish_reason:
                    finished.add(index)
                yield self._frame(planned, index, text, delta.finish_reason, logprobs)
        except EngineLost:
            yield sse.error_frame(replica_lost())
            return
        except Exception:
            yield sse.error_frame(internal_error(planned.id, "generating"))
            return
        for index in range(len(planned.generations) * n):
            if index not in finished:
                yield self._frame(planned, index, "", "stop", None)
        if planned.request.include_usage:
            usage = Usage.of(planned.prompt_tokens, sum(tokens.values()), cached_tokens=sum(cached.values()))
            yield sse.frame(self._object(planned, [], usage).model_dump_json())
        yield sse.DONE

    def _frame(
        self,
        planned: PlannedCompletion,
        index: int,
        text: str,
        finish: FinishReason | None,
        logprobs: CompletionLogprobs | None,
    ) -> bytes:
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)
        return sse.frame(self._object(planned, [choice], None).model_dump_json(exclude={"usage"}))

    def _object(self, planned: PlannedCompletion, choices: list[CompletionChoice], usage: Usage | None) -> Completion:
        return Completion(
            id=planned.id,
            created=planned.created,
            model=self.model_id,
            choices=choices,
            system_fingerprint=SYSTEM_FINGERPRINT,
            usage=usage,
        )


def _legacy_logprobs(logprobs: list[TokenLogprob] | None, start_offset: int) -> CompletionLogprobs | None:
    """The completions API's column layout: tokens, their logprobs, top alternatives, character offsets."""
    if logprobs is None:
        return None
    offsets, position = [], start_offset
    for t in logprobs:
        offsets.append(position)
        position += len(t.chosen.token)
    return CompletionLogprobs(
        tokens=[t.chosen.token for t in logprobs],
        token_logprobs=[t.chosen.logprob for t in logprobs],
        top_logprobs=[{c.token: c.logprob for c in t.top} for t in logprobs],
        text_offset=offsets,
    )
