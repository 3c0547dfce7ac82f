"""Bad input through the HTTP surface in process (issue #17): every malformed or edge-case body of
tests/bad_requests.py gets the status OpenAI gives it, a refusal names the place, and a refused stream is
a 4xx before anything is sent. (The same table runs through the whole stack in tests/integration.)"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from serve_app.config import ServerOptions
from serve_app.engines.replay import ReplayEngine
from serve_app.http_api import create_http_app
from tests.bad_requests import CASES, Case, assert_openais_answer, body_for, with_streamed_variants
from tests.conftest import REPLAY_SCRIPT
from tests.in_process import InProcessBackend

MODEL = "replay-model"


@pytest.fixture(scope="module")
def client(tokenizer: Any) -> TestClient:
    backend = InProcessBackend(MODEL, ReplayEngine(tokenizer, REPLAY_SCRIPT, 4096, 0.0), tokenizer)
    return TestClient(create_http_app(backend, ServerOptions()), raise_server_exceptions=False)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 60 and len(with_streamed_variants(CASES)) > len(CASES)


@pytest.mark.parametrize("case", with_streamed_variants(CASES), ids=lambda c: c.name)
def test_each_case_gets_openais_answer(client: TestClient, case: Case) -> None:
    headers = {"content-type": "application/json"}
    assert_openais_answer(client.post(f"/v1{case.path}", content=body_for(case, MODEL), headers=headers), case)
