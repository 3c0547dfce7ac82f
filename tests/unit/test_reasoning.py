"""Reasoning parsers (R6.1, R6.2): fixtures and arbitrary chunkings (streamed == non-streamed), the
harmony format rendered by `openai-harmony`, and `reasoning_effort` reaching the chat template (R6.3)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.chat_completions import ChatCompletions, PlannedChat
from serve_app.engines.base import FinishReason as EngineFinishReason
from serve_app.engines.replay import ReplayEngine
from serve_app.output_parsing import ChoiceOutput, create_output_parser
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.tools import FunctionDefinition
from serve_app.reasoning import template_kwargs
from serve_app.tool_parsers.base import ParsedOutput, TextParser
from tests import harmony_fixtures as h
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse, read_frames

prose = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40).filter(
    lambda t: "<think>" not in t and "</think>" not in t and "<|" not in t
)


def _parse(parser: TextParser | None, text: str, cuts: Sequence[int] = ()) -> ParsedOutput:
    assert parser is not None
    output = ParsedOutput()
    previous = 0
    for cut in sorted({c for c in cuts if 0 < c < len(text)}) + [len(text)]:
        output.apply(parser.feed(text[previous:cut]))
        previous = cut
    output.apply(parser.finish())
    return output


def _think(starts_in_reasoning: bool = False) -> TextParser:
    parser = create_output_parser("think", None, [], True, starts_in_reasoning)
    assert parser is not None
    return parser


@pytest.mark.parametrize(
    ("text", "in_reasoning", "reasoning", "content"),
    [
        ("<think>\nLet me see.\n</think>\n\nIt is 4.", False, "Let me see.\n", "It is 4."),
        ("Let me see.</think>It is 4.", True, "Let me see.", "It is 4."),  # the prompt opened the block
        ("It is 4.", False, "", "It is 4."),
        ("  <think></think>It is 4.", False, "", "It is 4."),
        ("<think>cut off", False, "cut off", ""),
        ("<thin", False, "", "<thin"),
        ("a < b <think> is not a block", False, "", "a < b <think> is not a block"),
        ("<think>x</thi", False, "x</thi", ""),
    ],
    ids=[
        "block",
        "opened-by-prompt",
        "no-block",
        "empty-block",
        "unterminated",
        "partial-tag",
        "tag-mid-text",
        "partial-close",
    ],
)
def test_think_fixtures(text: str, in_reasoning: bool, reasoning: str, content: str) -> None:
    for cuts in ([], list(range(len(text))), [len(text) // 2]):
        output = _parse(_think(in_reasoning), text, cuts)
        assert (output.reasoning, output.content) == (reasoning, content)


@settings(max_examples=300, deadline=None)
@given(reasoning=prose, answer=prose, opened=st.booleans(), cuts=st.lists(st.integers(0, 120), max_size=10))
def test_think_chunkings_equal_the_whole(reasoning: str, answer: str, opened: bool, cuts: list[int]) -> None:
    text = ("" if opened else "<think>") + reasoning + "</think>" + answer
    whole = _parse(_think(opened), text)
    streamed = _parse(_think(opened), text, cuts)
    assert (streamed.reasoning, streamed.content) == (whole.reasoning, whole.content)
    assert (whole.reasoning, whole.content) == (reasoning.lstrip(), answer.lstrip())


def test_think_then_tool_calls() -> None:
    """The answer after the reasoning goes on to the tool parser."""
    text = '<think>Need the file.</think>\n<tool_call>\n{"name": "read", "arguments": {"path": "a"}}\n</tool_call>'
    for cuts in ([], list(range(len(text)))):
        output = _parse(create_output_parser("think", "hermes", [], True), text, cuts)
        assert output.reasoning == "Need the file."
        assert [(c.name, c.arguments) for c in output.calls] == [("read", '{"path": "a"}')]
        assert output.content.strip() == ""


HARMONY_CASES = {
    "reasoning-then-answer": ([h.analysis("The user greets."), h.final("Hello!")], "The user greets.", "Hello!", []),
    "reasoning-then-call": (
        [h.analysis("Need weather."), h.call("get_weather", '{"city": "Paris"}')],
        "Need weather.",
        "",
        [("get_weather", '{"city": "Paris"}')],
    ),
    "preamble-is-content": (
        [h.analysis("Plan."), h.preamble("Checking the weather."), h.call("get_weather", "{}")],
        "Plan.",
        "Checking the weather.",
        [("get_weather", "{}")],
    ),
    "markup-in-strings": (
        [h.call("write", '{"text": "a <|end b"}'), h.final("done")],
        "",
        "done",
        [("write", '{"text": "a <|end b"}')],
    ),
    "unicode": ([h.analysis("ünï ☃"), h.final("Grüße 👋")], "ünï ☃", "Grüße 👋", []),
}


@pytest.mark.parametrize("case", sorted(HARMONY_CASES))
def test_harmony_fixtures_rendered_by_openai_harmony(case: str) -> None:
    messages, reasoning, content, calls = HARMONY_CASES[case]
    text = h.completion(*messages)
    tools = [FunctionDefinition(name="get_weather")]
    for cuts in ([], list(range(len(text))), [len(text) // 3, len(text) // 2]):
        output = _parse(create_output_parser("harmony", "harmony", tools, True), text, cuts)
        assert (output.reasoning, output.content) == (reasoning, content)
        assert [(c.name, c.arguments) for c in output.calls] == calls


def test_harmony_ends_without_the_stop_token_and_plain_text_is_content() -> None:
    """The engine stops on <|call|>/<|return|> without emitting them; text without markup is content."""
    cut = h.completion(h.analysis("x"), h.final("The answer.")).removesuffix("<|end|>")
    assert _parse(create_output_parser("harmony", None, [], True), cut).content == "The answer."
    assert _parse(create_output_parser("harmony", None, [], True), "Just text.").content == "Just text."
    # Without tools in the request a recipient's body is content, not a call.
    called = _parse(create_output_parser("harmony", None, [], True), h.completion(h.call("f", '{"a": 1}')))
    assert called.calls == [] and called.content == '{"a": 1}'


def test_harmony_reasoning_before_a_forced_call() -> None:
    """tool_choice required/named: the constrained JSON call comes in the final channel after reasoning."""
    text = h.completion(h.analysis("Must call f."), h.final('{"name": "f", "arguments": {"a": 1}}'))
    output = _parse(create_output_parser("harmony", "llama3_json", [], True), text)
    assert output.reasoning == "Must call f."
    assert [(c.name, c.arguments) for c in output.calls] == [("f", '{"a": 1}')]


def _feed_deltas(choice: ChoiceOutput, pieces: list[str], reason: EngineFinishReason | None) -> ParsedOutput:
    output = ParsedOutput()
    for count, piece in enumerate(pieces, start=1):
        output.apply(choice.feed(piece, count))
    output.apply(choice.finish(reason))
    return output


def test_reasoning_tokens_are_the_deltas_that_reasoned() -> None:
    """R6.3: completion_tokens_details.reasoning_tokens counts the tokens spent reasoning."""
    choice = ChoiceOutput(_think())
    output = _feed_deltas(choice, ["<think>", "a", " b", "</think>", "Answer", "."], "stop")
    assert (output.reasoning, output.content) == ("a b", "Answer.")
    assert (choice.reasoning_tokens, choice.completion_tokens) == (2, 6)


def test_a_turn_that_only_reasoned_is_not_an_empty_success() -> None:
    """R6.2: the reasoning becomes the answer when the model stopped without visible output; a turn cut
    by the token cap stays `length` with what it had."""
    output = _feed_deltas(ChoiceOutput(_think()), ["<think>", "It is 4."], "stop")
    assert (output.reasoning, output.content) == ("It is 4.", "It is 4.")
    truncated = ChoiceOutput(_think())
    output = _feed_deltas(truncated, ["<think>", "Let me"], "length")
    assert (output.reasoning, output.content, truncated.finish_reason("length")) == ("Let me", "", "length")


@pytest.mark.parametrize(
    ("reasoning", "effort", "kwargs"),
    [
        ("think", "none", {"enable_thinking": False}),
        ("think", "minimal", {"enable_thinking": False}),
        ("think", "high", {"enable_thinking": True}),
        ("harmony", "minimal", {"reasoning_effort": "low"}),
        ("harmony", "medium", {"reasoning_effort": "medium"}),
        ("harmony", "xhigh", {"reasoning_effort": "high"}),
        (None, "high", {}),
        ("think", None, {}),
    ],
)
def test_reasoning_effort_maps_to_the_template_switch(
    reasoning: Any, effort: str | None, kwargs: dict[str, Any]
) -> None:
    """R6.3: the effort reaches each model's own mechanism; models without reasoning ignore it."""
    assert template_kwargs(reasoning, effort) == kwargs


# Qwen3's mechanism, reduced to the part that matters: `enable_thinking=false` pre-fills an empty block.
QWEN3_LIKE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
)
# DeepSeek-R1 distills open the block in the prompt: the model starts inside its reasoning.
R1_LIKE_TEMPLATE = "{% for m in messages %}{{ m.content }}\n{% endfor %}<think>\n"


def _reasoning_chat(tokenizer: Any, template: str, tmp_path: Path, text: str) -> ChatCompletions:
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump({"replies": [{"text": text}]}))
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)  # a copy: the template changes
    tokenizer.chat_template = template
    return ChatCompletions("thinker", ReplayEngine(tokenizer, script, 4096, 0.0), tokenizer, reasoning_parser="think")


def _plan(chat: ChatCompletions, **fields: Any) -> PlannedChat:
    body = {"model": "thinker", "messages": [{"role": "user", "content": "2+2?"}], **fields}
    planned = chat.plan(ChatCompletionRequest.model_validate(body))
    assert isinstance(planned, PlannedChat), planned
    return planned


def test_reasoning_effort_switches_qwen3_thinking_off(tokenizer: Any, tmp_path: Path) -> None:
    chat = _reasoning_chat(tokenizer, QWEN3_LIKE_TEMPLATE, tmp_path, "4")
    prompt = tokenizer.decode(_plan(chat, reasoning_effort="none").generation.prompt_token_ids)
    assert prompt.endswith("<think>\n\n</think>\n\n")
    assert "<think>" not in tokenizer.decode(_plan(chat, reasoning_effort="high").generation.prompt_token_ids)
    error = chat.plan(
        ChatCompletionRequest.model_validate(
            {"model": "thinker", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "maximal"}
        )
    )
    assert not isinstance(error, PlannedChat) and error.status_code == 400 and error.param == "reasoning_effort"


def test_reasoning_in_responses_and_streams(tokenizer: Any, tmp_path: Path) -> None:
    """R6.1 end to end over the engine protocol: both fields, same text; usage counts reasoning tokens."""
    chat = _reasoning_chat(tokenizer, R1_LIKE_TEMPLATE, tmp_path, "Two plus two is four.\n</think>\n\nIt is 4.")
    planned = _plan(chat)
    assert planned.meta.starts_in_reasoning
    result = asyncio.run(chat.complete(planned))
    assert isinstance(result, bytes), result
    body = json.loads(result)
    assert_valid(body, "CreateChatCompletionResponse")
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == message["reasoning"] == "Two plus two is four.\n"
    assert message["content"] == "It is 4."
    details = body["usage"]["completion_tokens_details"]
    assert 0 < details["reasoning_tokens"] < body["usage"]["completion_tokens"]

    async def stream() -> bytes:
        return await read_frames(chat.stream(_plan(chat, stream=True, stream_options={"include_usage": True})))

    chunks = parse_sse(asyncio.run(stream()))
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
    assert "".join(d.get("content", "") for d in deltas) == "It is 4."
    assert chunks[-1]["usage"]["completion_tokens_details"] == details
