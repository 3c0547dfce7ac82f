"""Overload is shed, not queued forever (issue #19, outcome 4): a burst of `response_format` requests beyond
what `StructuredOutput` takes and lets wait (8 at once, 2 waiting, in this app) is refused at once with a
503, `Retry-After` and OpenAI's error body, streamed or not; every accepted request completes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import SLOW_MODEL, STAGE_ONGOING, FaultApp
from tests.sse_client import parse_sse

pytestmark = pytest.mark.reliability

BURST = 24
JSON_BODY: dict[str, Any] = {
    "model": SLOW_MODEL,
    "messages": [{"role": "user", "content": "Answer as JSON."}],
    "response_format": {"type": "json_object"},
}


def _ask(base_url: str, stream: bool) -> httpx.Response:
    return httpx.post(f"{base_url}/chat/completions", json=JSON_BODY | {"stream": stream}, timeout=120)


def test_a_burst_past_the_stages_queue_is_shed_with_503s_and_the_rest_completes(fault_app: FaultApp) -> None:
    with ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(lambda i: _ask(fault_app.base_url, stream=i % 2 == 0), range(BURST)))
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    # Not necessarily all of the 8 + 2 places: Serve's router counts a request as waiting while it is still
    # being assigned, so under a burst it may refuse before the replica holds 8 (CI once saw 7 taken).
    assert STAGE_ONGOING // 2 <= len(accepted) < BURST and refused, [r.status_code for r in responses]
    for response in refused:
        assert response.status_code == 503, response.text
        assert float(response.headers["retry-after"]) > 0 and int(response.headers["retry-after-ms"]) > 0
        assert response.json()["error"]["code"] == "service_unavailable"
    for response in accepted:
        if response.headers["content-type"].startswith("text/event-stream"):
            assert parse_sse(response.content)[-1]["choices"][0]["finish_reason"] == "stop"
        else:
            assert response.json()["choices"][0]["finish_reason"] == "stop"
