"""Chat completions over the engine protocol (replay engine, real tokenizer), checked against OpenAI's spec."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import pytest

from serve_app.chat_completions import ChatCompletions, PlannedChat
from serve_app.engines.replay import ReplayEngine
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.usage import UsageReport
from tests.conftest import REPLAY_SCRIPT
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse, read_frames

COUNT = "one two three four five six seven eight nine ten"


@pytest.fixture
def chat(tokenizer: Any) -> ChatCompletions:
    engine = ReplayEngine(tokenizer, REPLAY_SCRIPT, max_model_len=512, token_delay_s=0.0)
    return ChatCompletions("replay-model", engine, tokenizer)


def _request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "replay-model", "messages": [{"role": "user", "content": "please count"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def _plan(chat: ChatCompletions, **fields: Any) -> PlannedChat:
    planned = chat.plan(_request(**fields))
    assert isinstance(planned, PlannedChat), planned
    return planned


def _complete(chat: ChatCompletions, **fields: Any) -> dict[str, Any]:
    body = asyncio.run(chat.complete(_plan(chat, **fields)))
    assert isinstance(body, bytes)
    return cast(dict[str, Any], json.loads(body))


def _stream(chat: ChatCompletions, **fields: Any) -> list[dict[str, Any]]:
    async def collect() -> bytes:
        return await read_frames(chat.stream(_plan(chat, stream=True, **fields)))

    return parse_sse(asyncio.run(collect()))


def test_non_streaming_response_matches_openai_schema(chat: ChatCompletions, tokenizer: Any) -> None:
    """R3.1, R3.2, R3.5: the full response shape, with engine token counts in usage."""
    body = _complete(chat)
    assert_valid(body, "CreateChatCompletionResponse")
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": COUNT, "refusal": None}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == len(tokenizer.encode(COUNT, add_special_tokens=False))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_prompt_is_rendered_through_the_chat_template(chat: ChatCompletions, tokenizer: Any) -> None:
    planned = _plan(
        chat,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
    )
    prompt = tokenizer.decode(planned.generation.prompt_token_ids)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_stream_chunks_follow_the_contract(chat: ChatCompletions) -> None:
    """R4.2-R4.4: schema-valid chunks, one id, role first, exactly one finish_reason, no usage unless asked."""
    chunks = _stream(chat)
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
        assert "usage" not in chunk
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == COUNT
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"] and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_usage_chunk_only_when_asked(chat: ChatCompletions) -> None:
    """R4.4: one final chunk with `choices: []` and usage; every other chunk has `usage: null`."""
    chunks = _stream(chat, stream_options={"include_usage": True})
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    *body, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 10
    assert all(c["usage"] is None for c in body)


def test_token_cap_gives_length_with_partial_text(chat: ChatCompletions) -> None:
    """R3.4: `length` when the cap was hit, with the partial content."""
    body = _complete(chat, max_completion_tokens=3)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert COUNT.startswith(body["choices"][0]["message"]["content"])


def test_cap_larger_than_the_context_is_clamped(chat: ChatCompletions) -> None:
    """R2.4: a cap beyond the remaining context is clamped, not refused."""
    planned = _plan(chat, max_tokens=32000)
    assert planned.generation.sampling.max_tokens == 512 - planned.meta.prompt_tokens


def test_prompt_longer_than_the_context_is_a_400(chat: ChatCompletions) -> None:
    """R2.5: context overflow is `context_length_exceeded`, never a silent truncation."""
    error = chat.plan(_request(messages=[{"role": "user", "content": "word " * 600}]))
    assert isinstance(error, OpenAIError)
    assert (error.status_code, error.code, error.param) == (400, "context_length_exceeded", "messages")
    assert "maximum context length is 512 tokens" in error.message
    assert_valid(json.loads(error.body()), "ErrorResponse")


def test_stream_options_without_stream_is_a_400(chat: ChatCompletions) -> None:
    """R2.6."""
    error = chat.plan(_request(stream_options={"include_usage": True}))
    assert isinstance(error, OpenAIError) and error.param == "stream_options"


def test_engine_failure_mid_stream_is_an_error_event_then_done(
    chat: ChatCompletions, tmp_path: Any, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """R4.8: a failure after the stream started is an `error` event, then [DONE]. R5.2: the event gives the
    request's id, not the exception's text; the log has the traceback under that id."""
    script = tmp_path / "s.yaml"
    script.write_text('replies: [{when: {turn: 5}, text: "never"}]')
    failing = ChatCompletions("m", ReplayEngine(tokenizer, script, 512, 0.0), tokenizer)
    chunks = _stream(failing)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    error = chunks[-1]["error"]
    assert_valid(chunks[-1], "ErrorResponse")
    assert (
        error["type"] == "server_error" and chunks[0]["id"] in error["message"] and "no reply" not in error["message"]
    )
    (logged,) = [r for r in caplog.records if chunks[0]["id"] in r.getMessage()]
    assert logged.exc_info is not None and "no reply for turn 0" in str(logged.exc_info[1])


def _plain_meta() -> Any:
    """A one-choice answer without tools, usage or a response format: what the renderers need to know."""
    from serve_app.chat_completions import ChatMeta

    return ChatMeta(
        id="chatcmpl-1",
        created=0,
        model="m",
        prompt_tokens=3,
        n=1,
        include_usage=False,
        tool_parser=None,
        tools=[],
        parallel_tool_calls=True,
    )


def test_an_engine_lost_mid_answer_is_a_503_to_retry_not_our_bug() -> None:
    """Issue #19, R5.2: the engine's replica dying under a post-processing stage (`EngineLost` from the deltas)
    is `service_unavailable`, as an error event then [DONE] once streaming, as a 503 with `Retry-After` whole."""
    from serve_app.chat_completions import render_complete, render_stream
    from serve_app.engines.base import EngineLost, GenerationDelta

    async def engine() -> Any:
        yield GenerationDelta(text="Hel", completion_tokens=1)
        raise EngineLost("the replica died")

    async def streamed() -> bytes:
        return await read_frames(render_stream(_plain_meta(), engine()))

    chunks = parse_sse(asyncio.run(streamed()))
    assert chunks[-2]["choices"][0]["delta"]["content"] == "Hel"
    assert_valid(chunks[-1], "ErrorResponse")
    assert chunks[-1]["error"]["code"] == "service_unavailable"
    whole = asyncio.run(render_complete(_plain_meta(), engine()))
    assert isinstance(whole, OpenAIError) and (whole.status_code, whole.code) == (503, "service_unavailable")
    assert whole.retry_after_s is not None and whole.retry_after_s > 0


def test_role_chunk_marks_the_first_token_even_without_visible_text() -> None:
    """R4.2: the role chunk goes out with the engine's first output, also when that output has no text
    (a special token, skipped when detokenized): otherwise the client sees nothing until the text starts,
    and a load generator times a late first token."""
    from serve_app.chat_completions import render_stream
    from serve_app.engines.base import GenerationDelta

    asked: list[int] = []

    async def engine() -> Any:
        for count, text in enumerate(["", "", "Hi"], start=1):
            asked.append(count)
            yield GenerationDelta(text=text, completion_tokens=count, finish_reason="stop" if text else None)

    async def run() -> list[tuple[list[int], bytes | UsageReport]]:
        return [(list(asked), item) async for item in render_stream(_plain_meta(), engine())]

    items = asyncio.run(run())
    frames = [(seen, item) for seen, item in items if isinstance(item, bytes)]
    prompt, whole = [item for _, item in items if isinstance(item, UsageReport)]
    assert prompt.completion_tokens == 0 and whole.completion_tokens == 3
    assert frames[0] == ([], b"")  # accepted: headers only
    engine_outputs_seen, first_chunks = frames[1]
    assert engine_outputs_seen == [1]  # sent before the engine's second output was asked for
    assert [c["choices"][0]["delta"] for c in parse_sse(first_chunks + b"data: [DONE]\n\n")] == [
        {"role": "assistant", "content": ""}
    ]
    chunks = parse_sse(b"".join(item for _, item in frames))
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hi", None]


def test_cached_prompt_tokens_are_reported_in_usage(chat: ChatCompletions) -> None:
    """The engine's prefix-cache hits reach `usage.prompt_tokens_details.cached_tokens`, whole and streamed,
    and the stream's last `UsageReport` (what metrics count)."""
    history = [{"role": "user", "content": "please count " + "and keep counting " * 20}]
    first = _complete(chat, messages=history)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    again = _complete(chat, messages=history)
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert 0 < cached < again["usage"]["prompt_tokens"]
    chunks = _stream(chat, messages=history, stream_options={"include_usage": True})
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == cached

    async def last_report() -> UsageReport:
        items = [item async for item in chat.stream(_plan(chat, stream=True, messages=history))]
        return [item for item in items if isinstance(item, UsageReport)][-1]

    assert asyncio.run(last_report()).cached_tokens == cached
