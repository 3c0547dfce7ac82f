"""Bad input never yields a 5xx or a dropped connection (R5): property-based bodies against the HTTP surface.

Bodies start from valid requests and get OpenAI's fields replaced by arbitrary JSON, unknown fields added,
and arbitrary message shapes; every answer must be a 2xx with a spec-valid body or stream, or a 4xx with
the error envelope.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serve_app.config import ServerOptions
from serve_app.engines.replay import ReplayEngine
from serve_app.http_api import create_http_app
from tests.conftest import REPLAY_SCRIPT
from tests.in_process import InProcessBackend
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse

MODEL = "replay-model"
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


def _bodies(
    base: dict[str, Any], fields: list[str], special: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    overrides = st.dictionaries(
        st.sampled_from(fields), json_values | small_numbers | st.sampled_from([True, False, MODEL]), max_size=4
    )
    extras = st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k not in fields), json_values, max_size=2
    )
    specials = st.fixed_dictionaries({}, optional=special)
    return st.builds(lambda o, s, e: {**base, **o, **s, **e}, overrides, specials, extras)


@pytest.fixture(scope="module")
def client(tokenizer: Any) -> TestClient:
    backend = InProcessBackend(MODEL, ReplayEngine(tokenizer, REPLAY_SCRIPT, 2048, 0.0), tokenizer)
    return TestClient(create_http_app(backend, ServerOptions(max_request_body_bytes=200_000)))


def _check(response: Any, response_schema: str, chunk_check: Any) -> None:
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


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@FUZZ
@given(
    body=_bodies({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, CHAT_FIELDS, {"messages": messages})
)
def test_chat_bodies_never_cause_a_server_error(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/v1/chat/completions", json=body)
    _check(response, "CreateChatCompletionResponse", lambda c: assert_valid(c, "CreateChatCompletionStreamResponse"))


def _completion_chunk(chunk: dict[str, Any]) -> None:
    for choice in chunk["choices"]:
        choice["finish_reason"] = choice["finish_reason"] or "stop"  # OpenAI streams null until the end
    assert_valid(chunk, "CreateCompletionResponse")


@FUZZ
@given(
    body=_bodies(
        {"model": MODEL, "prompt": "hi"},
        COMPLETION_FIELDS,
        {"prompt": st.text(max_size=20) | st.lists(st.integers(-5, 60000), max_size=5) | json_values},
    )
)
def test_completion_bodies_never_cause_a_server_error(client: TestClient, body: dict[str, Any]) -> None:
    _check(client.post("/v1/completions", json=body), "CreateCompletionResponse", _completion_chunk)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_undecodable_bodies_are_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400), response.text
