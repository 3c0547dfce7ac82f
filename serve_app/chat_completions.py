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
from serve_app.engines.base import Engine, GenerationRequest, SamplingOptions
from serve_app.protocol.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    Delta,
    FinishReason,
    ResponseMessage,
    StreamChoice,
    Usage,
)
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
        if request.n != 1:
            return invalid_request("Only n=1 is supported.", param="n")
        if request.stream_options is not None and not request.stream:
            return invalid_request("stream_options is only allowed when stream is true.", param="stream_options")
        try:
            prompt = self.tokenizer.apply_chat_template(
                [_template_message(m) for m in request.messages], tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raises TemplateError and others from inside the template
            return invalid_request(f"The model's chat template cannot render these messages: {exc}", param="messages")
        prompt_ids: list[int] = self.tokenizer.encode(prompt, add_special_tokens=False)
        context = self.engine.max_model_len
        room = context - len(prompt_ids)
        if room <= 0:
            return invalid_request(
                f"This model's maximum context length is {context} tokens. However, your messages resulted in "
                f"{len(prompt_ids)} tokens. Please reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        sampling = SamplingOptions(
            max_tokens=min(request.token_cap or room, room),  # R2.4: clamp to the context, never refuse
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop_sequences,
            seed=request.seed,
        )
        generation = GenerationRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            prompt_token_ids=prompt_ids,
            sampling=sampling,
            messages=[m.model_dump(exclude_none=True) for m in request.messages],
        )
        return PlannedChat(request, generation, int(time.time()))

    async def complete(self, chat: PlannedChat) -> bytes | OpenAIError:
        """The whole answer as one `chat.completion` JSON body."""
        parts: list[str] = []
        completion_tokens, finish = 0, "stop"
        try:
            async for delta in self.engine.generate(chat.generation):
                parts.append(delta.text)
                completion_tokens = delta.completion_tokens
                finish = delta.finish_reason or finish
        except Exception as exc:
            return server_error(f"The engine failed while generating: {exc}")
        response = ChatCompletion(
            id=chat.id,
            created=chat.created,
            model=self.model_id,
            choices=[Choice(index=0, message=ResponseMessage(content="".join(parts)), finish_reason=finish)],
            usage=Usage.of(chat.prompt_tokens, completion_tokens),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )
        return response.model_dump_json().encode()

    async def stream(self, chat: PlannedChat) -> AsyncIterator[bytes]:
        """SSE frames: the role first, content deltas, one finish_reason, usage if asked, [DONE]."""
        encode = _ChunkEncoder(chat, self.model_id)
        yield encode(Delta(role="assistant", content=""))
        completion_tokens, finish = 0, None
        try:
            async for delta in self.engine.generate(chat.generation):
                completion_tokens = delta.completion_tokens
                finish = delta.finish_reason or finish
                if delta.text:
                    yield encode(Delta(content=delta.text))
        except Exception as exc:
            yield sse.error_frame(server_error(f"The engine failed while generating: {exc}"))
            return
        yield encode(Delta(), finish or "stop")
        if chat.request.include_usage:
            yield encode.usage(Usage.of(chat.prompt_tokens, completion_tokens))
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

    def __call__(self, delta: Delta, finish_reason: FinishReason | None = None) -> bytes:
        return self._frame([StreamChoice(index=0, delta=delta, finish_reason=finish_reason)])

    def usage(self, usage: Usage) -> bytes:
        return self._frame([], usage)


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """What a chat template expects: string content, and `developer` as the system role it means."""
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": message.text()}
