"""Tool-call parsers: for arbitrary splits of the model's text into deltas, streaming equals non-streaming
byte for byte (R4.6) and the event stream has the shape clients need (R4.5)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.protocol.tools import FunctionDefinition
from serve_app.tool_parsers import create_parser, parse_complete
from serve_app.tool_parsers.base import ContentDelta, Event, ParsedOutput, ToolCallArguments, ToolCallStart

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8
)
arguments = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
# Python keyword arguments need identifier names.
identifier_arguments = st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True), json_values, max_size=4)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
# Text around calls: anything, including near-markers, but never a whole opening marker.
prose = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)
TRICKY = ["", "{", "}", "<tool", "</tool_call>", "\\n", " ", '{"name": 1}', "ünï ☃"]


def _feed_in_chunks(
    parser_name: str, text: str, cuts: list[int], tools: list[FunctionDefinition]
) -> tuple[ParsedOutput, list[Event]]:
    parser = create_parser(parser_name, tools)
    events: list[Event] = []
    previous = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(text))) + [len(text)]:
        events += parser.feed(text[previous:cut])
        previous = cut
    events += parser.finish()
    output = ParsedOutput()
    output.apply(events)
    return output, events


def _assert_r4_5(events: list[Event]) -> None:
    """First sight of a call: index, id, non-empty name; then only argument fragments for that index."""
    started: dict[int, str] = {}
    for event in events:
        if isinstance(event, ToolCallStart):
            assert event.index == len(started) and event.name and event.id.startswith("call_")
            assert event.id not in started.values()
            started[event.index] = event.id
        elif isinstance(event, ToolCallArguments):
            assert event.index in started and isinstance(event.fragment, str)


def _check_split_invariance(
    parser_name: str, text: str, cuts: list[int], tools: list[FunctionDefinition] | None = None
) -> ParsedOutput:
    whole = parse_complete(create_parser(parser_name, tools or []), text)
    streamed, events = _feed_in_chunks(parser_name, text, cuts, tools or [])
    _assert_r4_5(events)
    assert streamed.content == whole.content
    assert streamed.reasoning == whole.reasoning
    assert [(c.name, c.arguments) for c in streamed.calls] == [(c.name, c.arguments) for c in whole.calls]
    return whole


Calls = list[tuple[str, dict[str, Any]]]


def render_hermes(calls: Calls, texts: list[str], indent: int | None) -> tuple[str, str]:
    """Text around and between calls; all of it is content."""
    texts = [t for t in texts if "<tool_call>" not in t] + [""] * (len(calls) + 1)
    parts = [texts[0]]
    for (name, args), after in zip(calls, texts[1:], strict=False):
        body = json.dumps({"name": name, "arguments": args}, indent=indent, ensure_ascii=False)
        parts.append(f"<tool_call>\n{body}\n</tool_call>{after}")
    return "".join(parts), "".join(texts[: len(calls) + 1])


def render_llama3(calls: Calls, texts: list[str], indent: int | None) -> tuple[str, str]:
    """Either plain content, or calls (after an optional tag) followed by trailing content."""
    if not calls:
        content = texts[0] if not texts[0].lstrip().startswith(("{", "<|python_tag|>")) else "x" + texts[0]
        return content, content
    objects = "; ".join(json.dumps({"name": n, "parameters": a}, indent=indent, ensure_ascii=False) for n, a in calls)
    trailing = texts[-1].lstrip().lstrip(";{")
    trailing = "" if trailing.startswith("<|python_tag|>") else trailing
    tag = "<|python_tag|>" if indent else ""
    return f"{tag}{objects}{' ' + trailing if trailing else ''}", (" " + trailing if trailing else "")


def render_mistral(calls: Calls, texts: list[str], indent: int | None) -> tuple[str, str]:
    """Content, then the calls in one of Mistral's two dialects (array for indent=2, [ARGS] otherwise)."""
    content = texts[0].replace("[TOOL_CALLS]", "")
    if not calls:
        return content, content
    if indent:
        body = json.dumps([{"name": n, "arguments": a} for n, a in calls], indent=indent, ensure_ascii=False)
        return f"{content}[TOOL_CALLS] {body}", content
    return content + "".join(f"[TOOL_CALLS]{n}[ARGS]{json.dumps(a, ensure_ascii=False)}" for n, a in calls), content


def render_pythonic(calls: Calls, texts: list[str], indent: int | None) -> tuple[str, str]:
    """Either plain content, or a Python list of calls followed by trailing content."""
    if not calls:
        content = texts[0] if not texts[0].lstrip().startswith("[") else "x" + texts[0]
        return content, content
    rendered = ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in a.items())})" for n, a in calls)
    return f"[{rendered}]{texts[-1]}", texts[-1]


def render_qwen3_coder(calls: Calls, texts: list[str], indent: int | None) -> tuple[str, str]:
    """Text around XML calls; string values raw (multi-line allowed), others as JSON."""
    texts = [t for t in texts if "<tool_call>" not in t] + [""] * (len(calls) + 1)
    parts = [texts[0]]
    for (name, args), after in zip(calls, texts[1:], strict=False):
        params = "".join(
            f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n" for k, v in args.items()
        )
        parts.append(f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>{after}")
    return "".join(parts), "".join(texts[: len(calls) + 1])


def render_harmony(calls: Calls, texts: list[str], indent: int | None) -> tuple[str, str]:
    """Reasoning (analysis), a preamble when indented, the calls, a final answer: rendered by openai-harmony."""
    from tests import harmony_fixtures as h

    texts = [t for t in texts if "<|" not in t] + [""] * 2
    messages = [h.analysis(texts[0])] + ([h.preamble("Calling.")] if indent else [])
    messages += [h.call(n, json.dumps(a, indent=indent, ensure_ascii=False)) for n, a in calls]
    messages.append(h.final(texts[1]))
    return h.completion(*messages), ("Calling." if indent else "") + texts[1]


def tools_for(calls: Calls) -> list[FunctionDefinition]:
    """Declared parameter types, which XML formats need to type raw values."""
    return [
        FunctionDefinition(
            name=name,
            parameters={
                "type": "object",
                "properties": {k: {"type": "string" if isinstance(v, str) else "object"} for k, v in args.items()},
            },
        )
        for name, args in calls
    ]


RENDERERS: dict[str, Callable[[Calls, list[str], int | None], tuple[str, str]]] = {
    "harmony": render_harmony,
    "hermes": render_hermes,
    "llama3_json": render_llama3,
    "mistral": render_mistral,
    "pythonic": render_pythonic,
    "qwen3_coder": render_qwen3_coder,
}


@pytest.mark.parametrize("parser_name", sorted(RENDERERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data(), indent=st.sampled_from([None, 2]), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_streaming_equals_non_streaming_and_recovers_the_calls(
    parser_name: str, data: st.DataObject, indent: int | None, cuts: list[int]
) -> None:
    argument_values = identifier_arguments if parser_name in ("pythonic", "qwen3_coder") else arguments
    if parser_name == "qwen3_coder":  # raw XML values: strings must not contain the closing tag
        argument_values = argument_values.filter(lambda a: not any("</parameter>" in str(v) for v in a.values()))
    calls = data.draw(st.lists(st.tuples(names, argument_values), max_size=3, unique_by=lambda c: c[0]))
    texts = data.draw(st.lists(prose | st.sampled_from(TRICKY), min_size=len(calls) + 1, max_size=len(calls) + 1))
    text, content = RENDERERS[parser_name](calls, texts, indent)
    whole = _check_split_invariance(parser_name, text, cuts, tools_for(calls))
    assert [(c.name, json.loads(c.arguments)) for c in whole.calls] == [(n, a) for n, a in calls]
    assert whole.content == content


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (
            'Let me look. <tool_call>\n{"name": "read", "arguments": {"path": "a\\"</tool_call>{}.py"}}\n</tool_call>',
            "Let me look. ",
            [("read", '{"path": "a\\"</tool_call>{}.py"}')],
        ),
        (
            '<tool_call>{"arguments": {"x": [1, {"y": "}"}]}, "name": "f"}</tool_call>',
            "",
            [("f", '{"x": [1, {"y": "}"}]}')],
        ),
        ('<tool_call>{"name": "now"}</tool_call>', "", [("now", "{}")]),
        (
            '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "b", "arguments": {"k": "ü☃"}}</tool_call> done',
            "\n done",
            [("a", "{}"), ("b", '{"k": "ü☃"}')],
        ),
        ("plain <tool_call>not json</tool_call> text", "plain <tool_call>not json</tool_call> text", []),
        ('cut <tool_call>{"na', 'cut <tool_call>{"na', []),
        ('cut <tool_call>{"name": "f", "arguments": {"a": ', "cut ", [("f", '{"a": ')]),
        ("almost <tool_cal", "almost <tool_cal", []),
    ],
    ids=[
        "strings-with-markers",
        "arguments-first-nested",
        "no-arguments",
        "two-calls-unicode",
        "malformed-is-content",
        "unterminated-header-is-content",
        "truncated-arguments",
        "partial-marker",
    ],
)
def test_hermes_fixtures(text: str, content: str, calls: list[tuple[str, str]]) -> None:
    for cuts in ([], list(range(len(text))), [len(text) // 2]):
        output = _check_split_invariance("hermes", text, cuts)
        assert output.content == content
        assert [(c.name, c.arguments) for c in output.calls] == calls


def test_arguments_stream_before_the_call_ends() -> None:
    """R4.6: fragments are not held until the call is complete."""
    parser = create_parser("hermes", [])
    events = parser.feed('<tool_call>{"name": "write", "arguments": {"content": "hello wor')
    assert isinstance(events[0], ToolCallStart) and events[0].name == "write"
    assert "".join(e.fragment for e in events if isinstance(e, ToolCallArguments)) == '{"content": "hello wor'
    assert not any(isinstance(e, ContentDelta) for e in events)


@pytest.mark.parametrize(
    ("parser_name", "text"),
    [
        (
            "hermes",
            '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>',
        ),
        ("llama3_json", '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}'),
        ("pythonic", "[a(), b(x=1)]"),
    ],
)
def test_parallel_tool_calls_false_keeps_only_the_first_call(parser_name: str, text: str) -> None:
    """R2.3 for every format: at most one call per turn."""
    output = parse_complete(create_parser(parser_name, [], parallel_calls=False), text)
    assert [(c.name, c.arguments) for c in output.calls] == [("a", "{}")]
