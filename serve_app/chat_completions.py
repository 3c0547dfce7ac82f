"""Chat completions for one model: request -> prompt -> engine deltas -> OpenAI response or SSE frames.

Pure logic (no Ray). Planning needs the model's tokenizer and runs in the engine deployment; rendering
deltas into the wire format (`render_stream`, `render_complete`) needs only the plain `ChatMeta`, so it
runs wherever the output is last changed: the engine deployment for plain chat, the tool-parsing
deployment when tool calls must be parsed out of the text. Output is serialized there, once.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from serve_app import responses_output, sse
from serve_app.engines.base import Engine, EngineLost, GenerationDelta, GenerationRequest, TokenLogprob
from serve_app.engines.base import FinishReason as EngineFinishReason
from serve_app.generation import context_error, sampling_options
from serve_app.output_parsing import AnswerOutput, ChoiceOutput, create_output_parser
from serve_app.protocol.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ResponseMessage,
    StreamChoice,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from serve_app.protocol.chat import (
    TokenLogprob as WireTokenLogprob,
)
from serve_app.protocol.common import FinishReason, Usage, valid_text
from serve_app.protocol.errors import OpenAIError, internal_error, invalid_request, replica_lost
from serve_app.protocol.responses import ChatFromResponses, ResponsesShape
from serve_app.protocol.tools import AllowedToolsChoice, FunctionDefinition, NamedToolChoice
from serve_app.reasoning import EFFORTS, ReasoningFormat, starts_in_reasoning, template_kwargs
from serve_app.request_context import NO_CONTEXT, RequestContext
from serve_app.routing import needs_tool_parsing
from serve_app.structured_output import ResponseConstraint, arguments_violation
from serve_app.tool_constraints import callable_functions, enforced_schemas, forced_call_schema, strict_tools_tag
from serve_app.tool_parsers.base import ContentDelta, Event, ParsedOutput, ReasoningDelta, TextParser, ToolCallStart
from serve_app.tool_prompts import render_prompt, template_supports_tools
from serve_app.usage import UsageReport

SYSTEM_FINGERPRINT = "agent-serve"
# Output constrained to one bare call object is read by the JSON-call parser, whatever the model's format.
CONSTRAINED_CALL_PARSER = "llama3_json"


@dataclass(frozen=True)
class ChatMeta:
    """What rendering needs to know about a planned request: plain data that crosses Ray."""

    id: str
    created: int
    model: str
    prompt_tokens: int
    n: int
    include_usage: bool
    tool_parser: str | None  # None: no tool calls to read
    tools: list[FunctionDefinition]  # parsers of XML formats type raw values by the tools' schemas
    parallel_tool_calls: bool
    reasoning_parser: ReasoningFormat | None = None
    starts_in_reasoning: bool = False  # the prompt opened the reasoning block
    response_constraint: ResponseConstraint | None = None  # answers are post-checked against it
    enforced_tools: tuple[str, ...] = ()  # functions whose call arguments are post-checked (forced, strict)
    responses: ResponsesShape | None = None  # a `/v1/responses` request: rendered in that shape

    def violation(self, choice: ChoiceOutput, engine_reason: EngineFinishReason | None) -> OpenAIError | None:
        """A finished answer (not cut by the cap) that breaks what was enforced: the arguments of a call to
        an enforced tool (R7.3), or else `response_format` (R7.1)."""
        if engine_reason == "length":
            return None
        if choice.called:
            enforced = {f.name: f for f in self.tools if f.name in self.enforced_tools}
            for call in choice.calls:
                if call.name in enforced and (error := arguments_violation(enforced[call.name], call.arguments)):
                    return error
            return None
        constraint = self.response_constraint
        if constraint is None:
            return None
        reason = constraint.violation(choice.content)
        return None if reason is None else constraint.violation_error(reason, choice.content)

    def new_answer(self) -> AnswerOutput:
        return AnswerOutput([ChoiceOutput(self.new_parser()) for _ in range(self.n)], self.prompt_tokens)

    def new_parser(self) -> TextParser | None:
        return create_output_parser(
            self.reasoning_parser, self.tool_parser, self.tools, self.parallel_tool_calls, self.starts_in_reasoning
        )


@dataclass(frozen=True)
class PlannedChat:
    meta: ChatMeta
    generation: GenerationRequest

    @property
    def generations(self) -> tuple[GenerationRequest, ...]:
        return (self.generation,)


class ChatCompletions:
    def __init__(
        self,
        model_id: str,
        engine: Engine,
        tokenizer: Any,
        tool_parser: str = "hermes",
        reasoning_parser: ReasoningFormat | None = None,
        compact_json: bool = True,
    ) -> None:
        self.model_id = model_id
        self.engine = engine
        self.tokenizer = tokenizer
        self.tool_parser = tool_parser
        self.reasoning_parser = reasoning_parser
        self.compact_json = compact_json

    def plan(
        self,
        request: ChatCompletionRequest,
        constraint: ResponseConstraint | None = None,
        request_context: RequestContext = NO_CONTEXT,
    ) -> PlannedChat | OpenAIError:
        """Validate what only the model can judge (template, context window, the engine's own checks) and
        render the prompt. Schemas to enforce were checked before (structured_output.check_constraints);
        `constraint` is the request's `response_format` as the engine must enforce it; `request_context` says whose
        turn the generation takes in a busy engine."""
        if request.stream_options is not None and not request.stream:
            return invalid_request("stream_options is only allowed when stream is true.", param="stream_options")
        if request.top_logprobs is not None and not request.logprobs:
            return invalid_request("top_logprobs requires logprobs to be true.", param="top_logprobs")
        if (error := self._unsupported_content(request.messages)) is not None:
            return error
        if (error := _undeclared_tool_choice(request)) is not None:
            return error
        if request.reasoning_effort is not None and request.reasoning_effort not in EFFORTS:
            return invalid_request(
                f"reasoning_effort must be one of {', '.join(EFFORTS)}; got {request.reasoning_effort!r}.",
                param="reasoning_effort",
            )
        with_tools = needs_tool_parsing(request)
        try:
            prompt = render_prompt(
                self.tokenizer, request, with_tools, template_kwargs(self.reasoning_parser, request.reasoning_effort)
            )
        except Exception as exc:  # jinja raises TemplateError and others from inside the template
            return invalid_request(f"The model's chat template cannot render these messages: {exc}", param="messages")
        prompt_ids: list[int] = self.tokenizer.encode(valid_text(prompt), add_special_tokens=False)
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
        if self.reasoning_parser == "harmony":  # its markup is special tokens: the parser must see them
            sampling = dataclasses.replace(sampling, skip_special_tokens=False)
        parser = None
        if constraint is not None and not with_tools:  # R7.1: enforced while decoding (after any reasoning)
            sampling = dataclasses.replace(sampling, json_schema=constraint.grammar_schema)
        if with_tools:
            forced = forced_call_schema(request)
            if forced is not None:  # R7.3: `required` / a named function, enforced while decoding
                sampling, parser = dataclasses.replace(sampling, json_schema=forced), CONSTRAINED_CALL_PARSER
            else:
                # Without tool support in the template the model is prompted in Hermes format (tool_prompts);
                # harmony models write every message, calls included, in harmony whatever the prompt says.
                native = template_supports_tools(self.tokenizer) or self.tool_parser == "harmony"
                parser = self.tool_parser if native else "hermes"
                tag = strict_tools_tag(
                    request, parser, reasoning=self.reasoning_parser is not None, compact=self.compact_json
                )
                if isinstance(tag, OpenAIError):
                    return tag
                sampling = dataclasses.replace(sampling, structural_tag=tag)
                if request.parallel_tool_calls is False and parser == "hermes":
                    # At most one call (R2.3): generation ends where the first call closes.
                    sampling = dataclasses.replace(sampling, stop=(*sampling.stop, "</tool_call>"))
        responses = request.responses if isinstance(request, ChatFromResponses) else None
        request_id = f"resp_{uuid.uuid4().hex}" if responses else f"chatcmpl-{uuid.uuid4().hex}"
        meta = ChatMeta(
            request_id,
            int(time.time()),
            self.model_id,
            len(prompt_ids),
            sampling.n,
            request.include_usage,
            parser,
            callable_functions(request),
            request.parallel_tool_calls is not False,
            self.reasoning_parser,
            starts_in_reasoning(self.reasoning_parser, prompt),
            constraint,
            tuple(name for _, name, _ in enforced_schemas(request)) if with_tools else (),
            responses,
        )
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        who = request_context
        generation = GenerationRequest(request_id, prompt_ids, sampling, messages, who.caller, who.priority)
        if (refused := self.engine.refusal(generation)) is not None:
            # The engine counts alternatives in `logprobs`; chat asks for them in `top_logprobs`.
            return dataclasses.replace(refused, param="top_logprobs") if refused.param == "logprobs" else refused
        return PlannedChat(meta, generation)

    def _unsupported_content(self, messages: list[ChatMessage]) -> OpenAIError | None:
        for i, message in enumerate(messages):
            for j, kind in message.media_parts():
                return invalid_request(
                    f"Model '{self.model_id}' accepts text only; messages[{i}].content[{j}] is a "
                    f"'{kind}' part. Send text parts, or use a model with that modality.",
                    param=f"messages[{i}].content[{j}]",
                )
        return None

    async def complete(self, chat: PlannedChat) -> bytes | OpenAIError:
        return await render_complete(chat.meta, self.engine.generate(chat.generation))

    def stream(self, chat: PlannedChat) -> AsyncIterator[bytes | UsageReport]:
        return render_stream(chat.meta, self.engine.generate(chat.generation))


def _wire_delta(event: Event) -> Delta:
    if isinstance(event, ContentDelta):
        return Delta(content=event.text)
    if isinstance(event, ReasoningDelta):  # R6.1: both names, same text
        return Delta(reasoning_content=event.text, reasoning=event.text)
    if isinstance(event, ToolCallStart):
        function = FunctionCallDelta(name=event.name, arguments="")
        return Delta(tool_calls=[ToolCallDelta(index=event.index, id=event.id, type="function", function=function)])
    return Delta(tool_calls=[ToolCallDelta(index=event.index, function=FunctionCallDelta(arguments=event.fragment))])


def render_stream(meta: ChatMeta, deltas: AsyncIterator[GenerationDelta]) -> AsyncIterator[bytes | UsageReport]:
    """The answer's stream: chat's chunks, or a `/v1/responses` request's events (`responses_output.py`)."""
    if meta.responses is not None:
        return responses_output.render_stream(meta, meta.responses, deltas)
    return _render_chunks(meta, deltas)


async def _render_chunks(meta: ChatMeta, deltas: AsyncIterator[GenerationDelta]) -> AsyncIterator[bytes | UsageReport]:
    """SSE frames. First an empty item: the request is accepted, so the status and headers can go out
    before any token, without a chunk (clients and load generators time the first chunk as the first
    token). Then one item per engine output: the role chunks of all choices travel with the first
    output, even one without visible text (a special token, or text a parser holds until it can tell
    whether a tool call starts), so the first chunk marks the first token; then reasoning, content and
    tool-call deltas, one finish_reason per choice, the usage chunk if asked, [DONE]. Among them, values the
    ingress keeps (`serve_app/usage.py`): a `UsageReport` of the prompt before the first frame, and one of the
    whole stream last, also after an error event (not when the consumer closes the stream early)."""
    frames = _render_frames(meta, deltas)
    try:
        yield b""
        async for frame in frames:
            if frame:
                yield frame
    finally:
        await frames.aclose()  # a client that left stops the engine now, not at garbage collection


async def _render_frames(
    meta: ChatMeta, deltas: AsyncIterator[GenerationDelta]
) -> AsyncGenerator[bytes | UsageReport, None]:
    answer = meta.new_answer()
    yield UsageReport.of(answer.usage())  # the prompt's: what a stream cut early is charged
    frames = _chunk_frames(meta, answer, deltas)
    try:
        async for frame in frames:
            yield frame
    finally:
        await frames.aclose()
    yield UsageReport.of(answer.usage())


async def _chunk_frames(
    meta: ChatMeta, answer: AnswerOutput, deltas: AsyncIterator[GenerationDelta]
) -> AsyncGenerator[bytes, None]:
    """The frames of each engine output joined into one item (possibly empty after the first)."""
    encode = _ChunkEncoder(meta)
    out = [encode(index, Delta(role="assistant", content="")) for index in range(meta.n)]
    finished: set[int] = set()
    try:
        async for delta in deltas:
            choice = answer.choices[delta.index]
            events = answer.feed(delta)
            if delta.finish_reason:
                events += choice.finish(delta.finish_reason)
            logprobs = _wire_logprobs(delta.logprobs) if delta.logprobs else None  # none: no chunk for them
            for event in events:
                out.append(encode(delta.index, _wire_delta(event), logprobs=logprobs))
                logprobs = None  # a delta's logprobs travel once, with its first chunk
            if logprobs is not None:
                out.append(encode(delta.index, Delta(content=""), logprobs=logprobs))
            if delta.finish_reason:
                frame, failed = _closing_frame(meta, encode, delta.index, choice, delta.finish_reason)
                out.append(frame)
                if failed:
                    yield b"".join(out)
                    return
                finished.add(delta.index)
            yield b"".join(out)
            out = []
    except EngineLost:
        yield b"".join(out) + sse.error_frame(replica_lost())
        return
    except Exception:
        yield b"".join(out) + sse.error_frame(internal_error(meta.id, "generating"))
        return
    for index, choice in enumerate(answer.choices):
        if index not in finished:  # the engine ended without saying why: it stopped
            out += [encode(index, _wire_delta(event)) for event in choice.finish(None)]
            frame, failed = _closing_frame(meta, encode, index, choice, None)
            out.append(frame)
            if failed:
                yield b"".join(out)
                return
    if meta.include_usage:
        out.append(encode.usage(answer.usage()))
    out.append(sse.DONE)
    yield b"".join(out)


def _closing_frame(
    meta: ChatMeta, encode: _ChunkEncoder, index: int, choice: ChoiceOutput, reason: EngineFinishReason | None
) -> tuple[bytes, bool]:
    """The chunk with the choice's finish_reason, or (True) the error event that replaces it when the
    answer breaks `response_format`: a finish_reason would tell the client the answer is good."""
    if (error := meta.violation(choice, reason)) is not None:
        return sse.error_frame(error), True
    return encode(index, Delta(), choice.finish_reason(reason)), False


async def render_complete(meta: ChatMeta, deltas: AsyncIterator[GenerationDelta]) -> bytes | OpenAIError:
    """The whole answer as one `chat.completion` body, read by the same per-choice machines as streaming; or
    for a `/v1/responses` request, its `response` object (`responses_output.py`)."""
    if meta.responses is not None:
        return await responses_output.render_complete(meta, meta.responses, deltas)
    answer = meta.new_answer()
    outputs = [ParsedOutput() for _ in range(meta.n)]
    reasons: list[EngineFinishReason | None] = [None] * meta.n
    logprobs: list[list[TokenLogprob] | None] = [None] * meta.n
    try:
        async for delta in deltas:
            outputs[delta.index].apply(answer.feed(delta))
            reasons[delta.index] = delta.finish_reason or reasons[delta.index]
            if delta.logprobs is not None:
                logprobs[delta.index] = (logprobs[delta.index] or []) + delta.logprobs
    except EngineLost:
        return replica_lost()
    except Exception:
        return internal_error(meta.id, "generating")
    wire_choices = []
    for index, (choice, output) in enumerate(zip(answer.choices, outputs, strict=True)):
        output.apply(choice.finish(reasons[index]))
        if (error := meta.violation(choice, reasons[index])) is not None:
            return error
        calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in output.calls]
        # R3.2: content is null only beside tool calls; whitespace-only output is "".
        content = (output.content.strip() or None) if calls else (output.content if output.content.strip() else "")
        reasoning = output.reasoning or None
        message = ResponseMessage(
            content=content, tool_calls=calls or None, reasoning_content=reasoning, reasoning=reasoning
        )
        wire_choices.append(
            Choice(
                index=index,
                message=message,
                finish_reason=choice.finish_reason(reasons[index]),
                logprobs=_wire_logprobs(logprobs[index]),
            )
        )
    response = ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=wire_choices,
        usage=answer.usage(),
        system_fingerprint=SYSTEM_FINGERPRINT,
    )
    return response.model_dump_json().encode()


class _ChunkEncoder:
    def __init__(self, meta: ChatMeta) -> None:
        self._meta = meta
        # With include_usage every chunk says `"usage": null` but the last; without it, no usage key (R4.4).
        self._exclude = None if meta.include_usage else {"usage"}

    def _frame(self, choices: list[StreamChoice], usage: Usage | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=self._meta.id,
            created=self._meta.created,
            model=self._meta.model,
            choices=choices,
            system_fingerprint=SYSTEM_FINGERPRINT,
            usage=usage,
        )
        return sse.frame(chunk.model_dump_json(exclude=self._exclude))

    def __call__(
        self,
        index: int,
        delta: Delta,
        finish_reason: FinishReason | None = None,
        logprobs: ChoiceLogprobs | None = None,
    ) -> bytes:
        return self._frame([StreamChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)])

    def usage(self, usage: Usage) -> bytes:
        return self._frame([], usage)


def _undeclared_tool_choice(request: ChatCompletionRequest) -> OpenAIError | None:
    """R2.3: a named tool_choice (or `allowed_tools`) must name functions of `tools`."""
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        named = [("tool_choice.function.name", choice.function.name)]
    elif isinstance(choice, AllowedToolsChoice):
        named = [
            (f"tool_choice.allowed_tools.tools[{i}].function.name", tool.function.name)
            for i, tool in enumerate(choice.allowed_tools.tools)
        ]
    else:
        return None
    declared = {tool.function.name for tool in request.tools or []}
    for param, name in named:
        if name not in declared:
            return invalid_request(f"tool_choice names function {name!r}, which is not in tools.", param=param)
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
