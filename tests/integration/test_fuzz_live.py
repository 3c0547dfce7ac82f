"""The property-based bodies of tests/unit/test_fuzz_http.py, sent over HTTP to the running app (R5):
every answer a 2xx with a spec-valid body or stream, or a 4xx with the error envelope; never a 5xx,
never a hung connection (each request has its own timeout).

Most bodies go to the replay model; a few to real vLLM, with short answers and one choice (CPU time).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_bodies import chat_bodies, chat_chunk, check, completion_bodies, completion_chunk
from tests.integration.conftest import REPLAY_MODEL, VLLM_MODEL

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0  # a request without an answer by then hangs
# Fuzzed fields a vLLM request may not choose: at most 8 tokens, one choice.
VLLM_BUDGET = {"max_tokens": 8, "max_completion_tokens": 8, "n": 1}
LIVE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VLLM = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _chat(http: httpx.Client, body: dict[str, Any]) -> None:
    check(http.post("/chat/completions", json=body, timeout=TIMEOUT_S), "CreateChatCompletionResponse", chat_chunk)


def _completion(http: httpx.Client, body: dict[str, Any]) -> None:
    check(http.post("/completions", json=body, timeout=TIMEOUT_S), "CreateCompletionResponse", completion_chunk)


@LIVE
@given(body=chat_bodies(REPLAY_MODEL))
def test_chat_bodies_never_cause_a_server_error(http: httpx.Client, body: dict[str, Any]) -> None:
    _chat(http, body)


@LIVE
@given(body=completion_bodies(REPLAY_MODEL))
def test_completion_bodies_never_cause_a_server_error(http: httpx.Client, body: dict[str, Any]) -> None:
    _completion(http, body)


@VLLM
@given(body=chat_bodies(VLLM_MODEL, fixed=VLLM_BUDGET))
def test_chat_bodies_never_cause_a_server_error_on_vllm(http: httpx.Client, body: dict[str, Any]) -> None:
    _chat(http, body)


@VLLM
@given(body=completion_bodies(VLLM_MODEL, fixed={"max_tokens": 8, "n": 1}))
def test_completion_bodies_never_cause_a_server_error_on_vllm(http: httpx.Client, body: dict[str, Any]) -> None:
    _completion(http, body)


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=300))
def test_undecodable_bodies_are_400(http: httpx.Client, raw: bytes) -> None:
    response = http.post(
        "/chat/completions", content=raw, headers={"content-type": "application/json"}, timeout=TIMEOUT_S
    )
    assert response.status_code in (200, 400), response.text
