"""Bad input never yields a 5xx or a dropped connection (R5): property-based bodies against the HTTP surface.

Bodies start from valid requests and get OpenAI's fields replaced by arbitrary JSON, unknown fields added,
and arbitrary message shapes; every answer must be a 2xx with a spec-valid body or stream, or a 4xx with
the error envelope (tests/fuzz_bodies.py; tests/integration/test_fuzz_live.py sends them to the running app).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.config import ServerOptions
from serve_app.engines.replay import ReplayEngine
from serve_app.http_api import create_http_app
from tests.conftest import REPLAY_SCRIPT
from tests.fuzz_bodies import chat_bodies, chat_chunk, check, completion_bodies, completion_chunk
from tests.in_process import InProcessBackend

MODEL = "replay-model"


@pytest.fixture(scope="module")
def client(tokenizer: Any) -> TestClient:
    backend = InProcessBackend(MODEL, ReplayEngine(tokenizer, REPLAY_SCRIPT, 2048, 0.0), tokenizer)
    return TestClient(create_http_app(backend, ServerOptions(max_request_body_bytes=200_000)))


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@FUZZ
@given(body=chat_bodies(MODEL))
def test_chat_bodies_never_cause_a_server_error(client: TestClient, body: dict[str, Any]) -> None:
    check(client.post("/v1/chat/completions", json=body), "CreateChatCompletionResponse", chat_chunk)


@FUZZ
@given(body=completion_bodies(MODEL))
def test_completion_bodies_never_cause_a_server_error(client: TestClient, body: dict[str, Any]) -> None:
    check(client.post("/v1/completions", json=body), "CreateCompletionResponse", completion_chunk)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_undecodable_bodies_are_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400), response.text
