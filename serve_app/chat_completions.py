"""Chat completions for one model: request -> prompt -> engine -> OpenAI response or SSE frames.

Pure logic over the `Engine` protocol (no Ray): the engine deployment wraps it, tests drive it directly.
Output is serialized here, once; the ingress forwards the bytes untouched.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from serve_app import sse
from serve_app.engines.base import Engine, GenerationRequest, TokenLogprob
from serve_app.generation import collect, context_error, sampling_options
from serve_app.protocol.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    Delta,
    ResponseMessage,
    StreamChoice,
    TokenLogprob as WireTokenLogprob,
    TopLogprob,
)
from serve_app.protocol.common import FinishReason, Usage
from serve_app.protocol.errors import OpenAIError, invalid_request, server_error

SYSTEM_FINGERPRINT = "agent-serve"


@dataclass(frozen=True)
class PlannedChat:
    """A validated request, rendered and ready for the engine."""

    request: ChatCompletionRequest
    generation: GenerationRequest
    created: int

    @property
    def id(self) -> str:
        return self.generation.request_id

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt_token_ids)


class ChatCompletions:
    def __init__(self, model_id: str, engine: Engine, tokenizer: Any) -> None:
        self.model_id = model_id
        self.engine = engine
        self.tokenizer = tokenizer

    def plan(self, request: ChatCompletionRequest) -> PlannedChat | OpenAIError:
        """Validate what only the model can judge (template, context window) and render the prompt."""
        if request.stream_options is not None and not request.stream:
            return invalid_request("stream_options is only allowed when stream is true.", param="stream_options")
        if request.top_logprobs is not None and not request.logprobs:
            return invalid_request("top_logprobs requires logprobs to be true.", param="top_logprobs")
        if (error := self._unsupported_content(request.messages)) is not None:
            return error
        if (error := _unknown_named_tool(request)) is not None:
            return error
        try:
            prompt = self.tokenizer.apply_chat_template(
                [_template_message(m) for m in request.messages], tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raises TemplateError and others from inside the template
            return invalid_request(f"The model's chat template cannot render these messages: {exc}", param="messages")
        prompt_ids: list[int] = self.tokenizer.encode(prompt, add_special_tokens=False)
        context = self.engine.max_model_len
        if (error := context_error(len(prompt_ids), context, "messages")) is not None:
            return error
        sampling = sampling_options(
            request,
            cap=request.token_cap,
            room=context - len(prompt_ids),
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
            vocab_size=len(self.tokenizer),
        )
        if isinstance(sampling, OpenAIError):
            return sampling
        generation = GenerationRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            prompt_token_ids=prompt_ids,
            sampling=sampling,
            messages=[m.model_dump(exclude_none=True) for m in request.messages],
        )
        return PlannedChat(request, generation, int(time.time()))

    def _unsupported_content(self, messages: list[ChatMessage]) -> OpenAIError | None:
        for i, message in enumerate(messages):
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                kind = part.type
                if kind not in ("text", "refusal"):
                    return invalid_request(
                        f"Model '{self.model_id}' accepts text only; messages[{i}].content[{j}] is a "
                        f"'{kind}' part. Send text parts, or use a model with that modality.",
                        param=f"messages[{i}].content[{j}]",
                    )
        return None

    async def complete(self, chat: PlannedChat) -> bytes | OpenAIError:
        """The whole answer as one `chat.completion` JSON body."""
        try:
            result = await collect(self.engine, chat.generation)
        except Exception as exc:
            return server_error(f"The engine failed while generating: {exc}")
        response = ChatCompletion(
            id=chat.id,
            created=chat.created,
            model=self.model_id,
            choices=[
                Choice(
                    index=index,
                    message=ResponseMessage(content=choice.text),
                    finish_reason=choice.finish_reason,
                    logprobs=_wire_logprobs(choice.logprobs),
                )
                for index, choice in enumerate(result.choices)
            ],
            usage=Usage.of(chat.prompt_tokens, result.completion_tokens),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )
        return response.model_dump_json().encode()

    async def stream(self, chat: PlannedChat) -> AsyncIterator[bytes]:
        """SSE frames: each choice's role first, content deltas, one finish_reason per choice, usage if asked."""
        encode = _ChunkEncoder(chat, self.model_id)
        choices = range(chat.generation.sampling.n)
        for index in choices:
            yield encode(index, Delta(role="assistant", content=""))
        tokens = dict.fromkeys(choices, 0)
        finished: dict[int, FinishReason] = {}
        try:
            async for delta in self.engine.generate(chat.generation):
                tokens[delta.index] = delta.completion_tokens
                if delta.text or delta.logprobs:
                    yield encode(delta.index, Delta(content=delta.text), logprobs=_wire_logprobs(delta.logprobs))
                if delta.finish_reason:
                    finished[delta.index] = delta.finish_reason
                    yield encode(delta.index, Delta(), delta.finish_reason)
        except Exception as exc:
            yield sse.error_frame(server_error(f"The engine failed while generating: {exc}"))
            return
        for index in choices:
            if index not in finished:  # the engine ended without saying why: it stopped
                yield encode(index, Delta(), "stop")
        if chat.request.include_usage:
            yield encode.usage(Usage.of(chat.prompt_tokens, sum(tokens.values())))
        yield sse.DONE


class _ChunkEncoder:
    def __init__(self, chat: PlannedChat, model_id: str) -> None:
        self._chat, self._model_id = chat, model_id
        # With include_usage every chunk says `"usage": null` but the last; without it, no usage key (R4.4).
        self._exclude = None if chat.request.include_usage else {"usage"}

    def _frame(self, choices: list[StreamChoice], usage: Usage | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=self._chat.id,
            created=self._chat.created,
            model=self._model_id,
            choices=choices,
            system_fingerprint=SYSTEM_FINGERPRINT,
            usage=usage,
        )
        return sse.frame(chunk.model_dump_json(exclude=self._exclude))

    def __call__(
        self, index: int, delta: Delta, finish_reason: FinishReason | None = None, logprobs: ChoiceLogprobs | None = None
    ) -> bytes:
        return self._frame([StreamChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)])

    def usage(self, usage: Usage) -> bytes:
        return self._frame([], usage)


def _unknown_named_tool(request: ChatCompletionRequest) -> OpenAIError | None:
    """R2.3: a named tool_choice must name one of `tools`."""
    choice = request.tool_choice
    if not isinstance(choice, dict):
        return None
    name = (choice.get("function") or {}).get("name")
    declared = {(t.get("function") or {}).get("name") for t in request.tools or []}
    if name not in declared:
        return invalid_request(f"tool_choice names function {name!r}, which is not in tools.", param="tool_choice")
    return None


def _wire_logprobs(logprobs: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    if logprobs is None:
        return None
    return ChoiceLogprobs(
        content=[
            WireTokenLogprob(
                token=t.chosen.token,
                logprob=t.chosen.logprob,
                bytes=t.chosen.bytes,
                top_logprobs=[TopLogprob(token=c.token, logprob=c.logprob, bytes=c.bytes) for c in t.top],
            )
            for t in logprobs
        ]
    )


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """What a chat template expects: string content, and `developer` as the system role it means."""
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": message.text()}
