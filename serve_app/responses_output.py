"""A chat answer rendered in the Responses shape (R9.2, R9.3): the `response` object, or its stream of
events, from the same parser events as chat's (`serve_app/output_parsing.py`).

The answer's parser events become output items in order: reasoning (a `reasoning` item with
`reasoning_text`), text (a `message` with one `output_text` part), each call (a `function_call`, or a
`custom_tool_call` for a custom tool). A stream sends, with the first engine output (so that the first
frame marks the first token, as in chat), `response.created` and `response.in_progress`; then each item's
`response.output_item.added`, its deltas and `...done` events and `response.output_item.done` with the
whole item; then exactly one of `response.completed`, `response.incomplete` (the cap cut the answer) or
`response.failed` (Codex retries a stream that ends without one of them). Every event has an increasing
`sequence_number`. Events are framed `event: <type>` + `data: <json>`, with no `[DONE]`.

Pure logic (no Ray).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from serve_app.engines.base import EngineLost, GenerationDelta
from serve_app.engines.base import FinishReason as EngineFinishReason
from serve_app.output_parsing import AnswerOutput, ChoiceOutput
from serve_app.protocol.common import Usage
from serve_app.protocol.errors import OpenAIError, internal_error, replica_lost
from serve_app.protocol.responses import (
    IncompleteDetails,
    InputTokensDetails,
    ItemStatus,
    OutputCustomToolCall,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputTextPart,
    OutputTokensDetails,
    ReasoningTextPart,
    ResponseError,
    ResponseSettings,
    ResponsesShape,
    ResponseStatus,
    ResponseUsage,
)
from serve_app.responses import CUSTOM_TOOL_ARGUMENT
from serve_app.tool_parsers.base import (
    ContentDelta,
    Event,
    ReasoningDelta,
    TextBuilder,
    ToolCallStart,
)
from serve_app.usage import UsageReport

if TYPE_CHECKING:
    from serve_app.chat_completions import ChatMeta

TERMINAL_EVENTS = (b"event: response.completed\n", b"event: response.incomplete\n", b"event: response.failed\n")


def event_frame(kind: str, sequence_number: int, fields: dict[str, Any]) -> bytes:
    data = _json({"type": kind, "sequence_number": sequence_number, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _json(value: dict[str, Any]) -> bytes:
    # Echoed settings may quote the client's text, lone surrogates included: written as the JSON escapes
    # they came in as, so the bytes stay valid UTF-8 and valid JSON.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


def response_usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=usage.prompt_tokens_details.cached_tokens),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=usage.completion_tokens_details.reasoning_tokens),
        total_tokens=usage.total_tokens,
    )


def failure(error: OpenAIError) -> ResponseError:
    """An error as a failed response's `error`: a lack of capacity and our faults under OpenAI's codes (clients
    retry both); a client's mistake under its own code (`context_length_exceeded`: Codex stops and says so)."""
    if error.status_code == 429:
        return ResponseError(code="rate_limit_exceeded", message=error.message)
    if error.status_code < 500 and error.code is not None:
        return ResponseError(code=error.code, message=error.message)
    return ResponseError(code="server_error", message=error.message)


class ResponseObject:
    """The `response` object of one request, in any of its states."""

    def __init__(self, response_id: str, created_at: int, model: str, settings: ResponseSettings) -> None:
        self.id, self.created_at, self._model = response_id, created_at, model
        self._settings = settings.model_dump()

    def body(
        self,
        status: ResponseStatus,
        output: list[OutputItem],
        usage: Usage | None = None,
        error: ResponseError | None = None,
        incomplete: IncompleteDetails | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error.model_dump() if error else None,
            "incomplete_details": incomplete.model_dump() if incomplete else None,
            "model": self._model,
            **self._settings,
            "output": [item.model_dump() for item in output],
        }
        if usage is not None:  # last: `UsageReport.from_body` finds it by searching from the end
            body["usage"] = response_usage(usage).model_dump()
        return body


class _Item:
    """An output item being written: its events as it grows, the whole item when it is done."""

    def __init__(
        self, kind: str, item_id: str, call_id: str = "", name: str = "", namespace: str | None = None
    ) -> None:
        self.kind, self.id = kind, item_id
        self.call_id, self.name, self.namespace = call_id, name, namespace
        self.text = TextBuilder()

    def whole(self, status: ItemStatus) -> OutputItem:
        text = str(self.text)
        if self.kind == "message":
            return OutputMessage(id=self.id, status=status, content=[OutputTextPart(text=text)])
        if self.kind == "reasoning":
            return OutputReasoning(id=self.id, status=status, content=[ReasoningTextPart(text=text)])
        if self.kind == "custom_tool_call":
            return OutputCustomToolCall(
                id=self.id, call_id=self.call_id, name=self.name, input=_custom_input(text), namespace=self.namespace
            )
        return OutputFunctionCall(
            id=self.id,
            call_id=self.call_id,
            name=self.name,
            arguments=text or ("" if status == "in_progress" else "{}"),  # no arguments: "{}" (R3.3)
            status=status,
            namespace=self.namespace,
        )


def _custom_input(arguments: str) -> str:
    """A custom tool's input: the one string argument of the function it was offered as."""
    try:
        value = json.loads(arguments).get(CUSTOM_TOOL_ARGUMENT)
    except (ValueError, AttributeError):
        return arguments
    return value if isinstance(value, str) else arguments


_ID_PREFIX = {"message": "msg", "reasoning": "rs", "function_call": "fc", "custom_tool_call": "ctc"}


class ItemWriter:
    """Parser events of one answer -> output items, and (when `streaming`) the events that build them."""

    def __init__(self, shape: ResponsesShape, streaming: bool) -> None:
        self._shape = shape
        self._streaming = streaming
        self.sequence_number = 0
        self.done: list[OutputItem] = []
        self._open: _Item | None = None
        self._held_space = ""  # whitespace between items: only text that follows makes it a message

    def event(self, kind: str, **fields: Any) -> bytes:
        frame = event_frame(kind, self.sequence_number, fields) if self._streaming else b""
        self.sequence_number += 1
        return frame

    def on(self, event: Event) -> bytes:
        if isinstance(event, ContentDelta):
            return self._text("message", event.text)
        if isinstance(event, ReasoningDelta):
            return self._text("reasoning", event.text)
        if isinstance(event, ToolCallStart):
            custom = event.name in self._shape.custom_tools
            kind = "custom_tool_call" if custom else "function_call"
            namespace = self._shape.namespaces.get(event.name)
            return self.close("completed") + self._start(_Item(kind, _new_id(kind), event.id, event.name, namespace))
        item = self._open
        assert item is not None and item.kind.endswith("call"), "arguments without their call"
        item.text.append(event.fragment)
        if item.kind == "custom_tool_call":
            return b""  # the input is a JSON string's content: sent whole when the call is complete
        return self.event(
            "response.function_call_arguments.delta", item_id=item.id, output_index=self._index, delta=event.fragment
        )

    @property
    def _index(self) -> int:
        return len(self.done)

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        if kind == "message":
            # Whitespace around a message is layout between items: held until text follows it, dropped
            # before another item; the answer's own leading and trailing whitespace is kept, as in chat.
            if self._open is None or self._open.kind != "message":
                if not text.strip():
                    self._held_space += text
                    return b""
                after_an_item = bool(self.done) or self._open is not None
                text = text.lstrip() if after_an_item else self._held_space + text
                out += self.close("completed") + self._start(_Item(kind, _new_id(kind)))
            else:
                text = self._held_space + text
            visible = text.rstrip()
            text, self._held_space = visible, text[len(visible) :]
            if not text:
                return out
        elif self._open is None or self._open.kind != kind:
            out += self.close("completed") + self._start(_Item(kind, _new_id(kind)))
        item = self._open
        assert item is not None
        return out + self._delta(item, text)

    def _delta(self, item: _Item, text: str) -> bytes:
        item.text.append(text)
        where = {"item_id": item.id, "output_index": self._index, "content_index": 0}
        if item.kind == "message":
            return self.event("response.output_text.delta", **where, delta=text, logprobs=[])
        return self.event("response.reasoning_text.delta", **where, delta=text)

    def _start(self, item: _Item) -> bytes:
        self._open, self._held_space = item, ""
        out = self.event(
            "response.output_item.added", output_index=self._index, item=item.whole("in_progress").model_dump()
        )
        if item.kind == "message":
            part = OutputTextPart(text="").model_dump()
        elif item.kind == "reasoning":
            part = ReasoningTextPart(text="").model_dump()
        else:
            return out
        return out + self.event(
            "response.content_part.added", item_id=item.id, output_index=self._index, content_index=0, part=part
        )

    def close(self, status: ItemStatus, last: bool = False) -> bytes:
        """Ends the open item, if any: its `...done` events and its whole self. The `last` message of the
        answer keeps its trailing whitespace."""
        item, self._open = self._open, None
        if item is None:
            return b""
        out = b""
        if last and item.kind == "message" and self._held_space:
            out += self._delta(item, self._held_space)
        whole = item.whole(status)
        where: dict[str, Any] = {"item_id": item.id, "output_index": self._index}
        if isinstance(whole, OutputMessage | OutputReasoning):
            part = whole.content[0]
            if isinstance(part, OutputTextPart):
                out += self.event("response.output_text.done", **where, content_index=0, text=part.text, logprobs=[])
            else:
                out += self.event("response.reasoning_text.done", **where, content_index=0, text=part.text)
            out += self.event("response.content_part.done", **where, content_index=0, part=part.model_dump())
        elif isinstance(whole, OutputCustomToolCall):
            out += self.event("response.custom_tool_call_input.delta", **where, delta=whole.input)
            out += self.event("response.custom_tool_call_input.done", **where, input=whole.input)
        else:
            out += self.event(
                "response.function_call_arguments.done", **where, arguments=whole.arguments, name=whole.name
            )
        out += self.event("response.output_item.done", output_index=self._index, item=whole.model_dump())
        self.done.append(whole)
        return out

    def finish(self, status: ItemStatus) -> bytes:
        """Closes the last item; an answer with no item at all is an empty message (as chat's `""`)."""
        out = b""
        if self._open is None and not self.done:
            out += self._start(_Item("message", _new_id("message")))
        return out + self.close(status, last=True)


def _new_id(kind: str) -> str:
    return f"{_ID_PREFIX[kind]}_{secrets.token_hex(16)}"


def _outcome(
    meta: ChatMeta, choice: ChoiceOutput, reason: EngineFinishReason | None
) -> tuple[ResponseStatus, OpenAIError | None, IncompleteDetails | None]:
    if (error := meta.violation(choice, reason)) is not None:
        return "failed", error, None
    if reason == "length":
        return "incomplete", None, IncompleteDetails(reason="max_output_tokens")
    return "completed", None, None


async def render_stream(
    meta: ChatMeta, shape: ResponsesShape, deltas: AsyncIterator[GenerationDelta]
) -> AsyncIterator[bytes | UsageReport]:
    """The events, after an empty first item (accepted: status and headers can go out), with the same
    `UsageReport`s as chat's stream (`serve_app/usage.py`)."""
    answer = meta.new_answer()
    frames = _events(meta, shape, answer, deltas)
    try:
        yield b""
        yield UsageReport.of(answer.usage())  # the prompt's: what a stream cut early is charged
        async for frame in frames:
            if frame:
                yield frame
    finally:
        await frames.aclose()  # a client that left stops the engine now, not at garbage collection
    yield UsageReport.of(answer.usage())


async def _events(
    meta: ChatMeta, shape: ResponsesShape, answer: AnswerOutput, deltas: AsyncIterator[GenerationDelta]
) -> AsyncGenerator[bytes, None]:
    response = ResponseObject(meta.id, meta.created, meta.model, shape.settings)
    items = ItemWriter(shape, streaming=True)
    choice = answer.choices[0]
    reason: EngineFinishReason | None = None
    started = False

    def opening() -> bytes:
        """`response.created` and `.in_progress`, with the first engine output (or the end, if none came)."""
        nonlocal started
        if started:
            return b""
        started = True
        created = items.event("response.created", response=response.body("in_progress", []))
        return created + items.event("response.in_progress", response=response.body("in_progress", []))

    out = b""  # the frames of the engine's output at hand: sent even when a failure interrupts them
    try:
        async for delta in deltas:
            out = opening()
            events = answer.feed(delta)
            if delta.finish_reason:
                reason = delta.finish_reason
                events += choice.finish(reason)
            for event in events:
                out += items.on(event)
            yield out
            out = b""
    except Exception as exc:
        lost = replica_lost() if isinstance(exc, EngineLost) else internal_error(meta.id, "generating")
        yield (
            out
            + opening()
            + items.close("incomplete")
            + items.event(
                "response.failed", response=response.body("failed", items.done, answer.usage(), failure(lost))
            )
        )
        return
    out = opening() + (b"" if reason else b"".join(items.on(event) for event in choice.finish(None)))
    status, error, incomplete = _outcome(meta, choice, reason)
    out += items.finish("incomplete" if status == "incomplete" else "completed")
    usage = answer.usage()
    body = response.body(status, items.done, usage, failure(error) if error else None, incomplete)
    yield out + items.event(f"response.{status}", response=body)


async def render_complete(
    meta: ChatMeta, shape: ResponsesShape, deltas: AsyncIterator[GenerationDelta]
) -> bytes | OpenAIError:
    """The whole `response` object, read by the same machines as the stream."""
    answer = meta.new_answer()
    items = ItemWriter(shape, streaming=False)
    choice = answer.choices[0]
    reason: EngineFinishReason | None = None
    try:
        async for delta in deltas:
            for event in answer.feed(delta):
                items.on(event)
            reason = delta.finish_reason or reason
    except EngineLost:
        return replica_lost()
    except Exception:
        return internal_error(meta.id, "generating")
    for event in choice.finish(reason):
        items.on(event)
    status, error, incomplete = _outcome(meta, choice, reason)
    if error is not None:
        return error
    items.finish("incomplete" if status == "incomplete" else "completed")
    response = ResponseObject(meta.id, meta.created, meta.model, shape.settings)
    return _json(response.body(status, items.done, answer.usage(), None, incomplete))


class ResponsesFraming:
    """What the HTTP layer adds to a Responses stream itself (its deadline passed, a failure after the
    stream started): a `response.failed` event, numbered after the events already sent and naming the
    response they created (or, when none was sent yet, after a `response.created` and `.in_progress` of
    its own)."""

    def __init__(self, settings: ResponseSettings, model: str) -> None:
        self._settings, self._model = settings, model
        self._sent = 0
        self._response: ResponseObject | None = None

    def saw(self, frame: bytes) -> None:
        self._sent += frame.count(b"\ndata: ")  # one per event: JSON holds no raw newline
        if self._response is None and (created := _event_data(frame, "response.created")) is not None:
            response = json.loads(created)["response"]
            self._response = ResponseObject(response["id"], response["created_at"], self._model, self._settings)

    def ended(self, frame: bytes) -> bool:
        return any(terminal in frame for terminal in TERMINAL_EVENTS)

    def error(self, error: OpenAIError) -> bytes:
        out = b""
        if self._response is None:
            self._response = ResponseObject(
                f"resp_{secrets.token_hex(16)}", int(time.time()), self._model, self._settings
            )
            started = self._response.body("in_progress", [])
            out = self._event("response.created", response=started) + self._event(
                "response.in_progress", response=started
            )
        return out + self._event("response.failed", response=self._response.body("failed", [], error=failure(error)))

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._sent += 1
        return event_frame(kind, self._sent - 1, fields)


def failed_error_code(frame: bytes) -> str | None:
    """The error code of the `response.failed` event in `frame`, if there is one."""
    data = _event_data(frame, "response.failed")
    if data is None:
        return None
    try:
        return str(json.loads(data)["response"]["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "server_error"


def _event_data(frame: bytes, kind: str) -> bytes | None:
    """The JSON of the last event of type `kind` in `frame`."""
    at = frame.rfind(b"event: " + kind.encode() + b"\ndata: ")
    if at < 0:
        return None
    return frame[at:].split(b"\n", 2)[1].removeprefix(b"data: ")
