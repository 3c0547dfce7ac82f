"""Property-based request bodies for the HTTP surface, and what every answer to them must be (R5).

Bodies start from valid requests and get OpenAI's fields replaced by arbitrary JSON, unknown fields
added, and arbitrary message shapes; every answer must be a 2xx with a spec-valid body or stream, or a
4xx with the error envelope. Pure (hypothesis strategies and assertions): tests/unit/test_fuzz_http.py
sends the bodies to the app in process, tests/integration/test_fuzz_live.py to the running app.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import event
from hypothesis import strategies as st

from tests.bad_requests import Response
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse

CHAT_FIELDS = [
    "messages",
    "model",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "user",
    "store",
    "metadata",
]
COMPLETION_FIELDS = [
    "prompt",
    "model",
    "stream",
    "echo",
    "logprobs",
    "max_tokens",
    "n",
    "stop",
    "suffix",
    "best_of",
    "seed",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
small_numbers = st.integers(-3, 30) | st.floats(-3, 3, allow_nan=False)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "wizard"])
parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_audio", "refusal", 7])},
        optional={"text": st.text(max_size=10) | json_values, "cache_control": json_values},
    ),
    max_size=3,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles},
        optional={
            "content": st.none() | st.text(max_size=30) | parts | json_values,
            "tool_calls": json_values,
            "tool_call_id": st.text(max_size=5),
            "name": st.text(max_size=5),
        },
    ),
    max_size=4,
)
prompts = st.text(max_size=20) | st.lists(st.integers(-5, 60000), max_size=5) | json_values


def bodies(
    base: dict[str, Any],
    fields: list[str],
    special: Mapping[str, st.SearchStrategy[Any]],
    model: str,
    fixed: Mapping[str, Any] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with up to 4 of `fields` replaced (arbitrary JSON, small numbers, booleans, `model`), the
    `special` strategies for some fields, and up to 2 unknown fields. `fixed` fields are set last and
    never fuzzed (a budget for slow engines: short answers, one choice)."""
    fixed = dict(fixed or {})
    fuzzed = [f for f in fields if f not in fixed]
    overrides = st.dictionaries(
        st.sampled_from(fuzzed), json_values | small_numbers | st.sampled_from([True, False, model]), max_size=4
    )
    extras = st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k not in fields and k not in fixed), json_values, max_size=2
    )
    specials = st.fixed_dictionaries({}, optional={k: v for k, v in special.items() if k not in fixed})
    return st.builds(lambda o, s, e: {**base, **o, **s, **e, **fixed}, overrides, specials, extras)


def chat_bodies(model: str, fixed: Mapping[str, Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    base = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return bodies(base, CHAT_FIELDS, {"messages": messages}, model, fixed)


def completion_bodies(model: str, fixed: Mapping[str, Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    return bodies({"model": model, "prompt": "hi"}, COMPLETION_FIELDS, {"prompt": prompts}, model, fixed)


def check(response: Response, response_schema: str, chunk_check: Callable[[dict[str, Any]], None]) -> None:
    """Never a 5xx; a 4xx is 400/404/413 with the error envelope; a 2xx a spec-valid body or stream."""
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.status_code in (400, 404, 413), response.text
        assert_valid(response.json(), "ErrorResponse")
    elif response.headers["content-type"].startswith("text/event-stream"):
        for chunk in parse_sse(response.content):
            assert_valid(chunk, "ErrorResponse") if "error" in chunk else chunk_check(chunk)
    else:
        assert_valid(response.json(), response_schema)


def chat_chunk(chunk: dict[str, Any]) -> None:
    assert_valid(chunk, "CreateChatCompletionStreamResponse")


def completion_chunk(chunk: dict[str, Any]) -> None:
    for choice in chunk["choices"]:
        choice["finish_reason"] = choice["finish_reason"] or "stop"  # OpenAI streams null until the end
    assert_valid(chunk, "CreateCompletionResponse")
