"""Admission through the whole stack (issue #17): an engine that is busy beyond the keep-alive interval still
judges every request on arrival. A request it would refuse gets its 4xx status, never a 200 whose stream
then fails (R4.8 is for failures after the start, not for refusals); one that must wait streams keep-alives
(R4.7) and completes; past the waiting bound, a 503 with `Retry-After` (R5.2).

`replay-narrow` runs one generation at a time and lets one request wait; the session app's keep-alive is 1 s.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.conftest import NARROW_MODEL
from tests.sse_client import parse_sse

pytestmark = pytest.mark.integration


def _chat(content: str, stream: bool = True) -> dict[str, object]:
    return {"model": NARROW_MODEL, "messages": [{"role": "user", "content": content}], "stream": stream}


def test_a_busy_engine_judges_on_arrival_and_sheds_past_its_queue(http: httpx.Client) -> None:
    # The first answer's first token comes after 4 s (the script's "think slowly"): the engine is busy.
    with http.stream("POST", "/chat/completions", json=_chat("Please think slowly.")) as running:
        assert running.status_code == 200
        time.sleep(0.5)  # admitted: it holds the one place
        with http.stream("POST", "/chat/completions", json=_chat("Count to ten.")) as waiting:
            assert waiting.status_code == 200  # judged good; now it waits its turn, streaming keep-alives
            time.sleep(0.5)

            too_long = http.post("/chat/completions", json=_chat("word " * 600))
            assert too_long.status_code == 400, too_long.text
            assert too_long.json()["error"]["code"] == "context_length_exceeded"

            for stream in (True, False):
                shed = http.post("/chat/completions", json=_chat("Count to ten.", stream=stream))
                assert shed.status_code == 503, shed.text
                assert shed.json()["error"]["type"] == "server_error"
                assert float(shed.headers["retry-after-ms"]) > 0 and int(shed.headers["retry-after"]) >= 1

            waited = waiting.read()
        first = running.read()
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in parse_sse(first)) == "Done thinking."
    assert b": keep-alive" in waited  # R4.7: it waited behind the running answer for seconds
    counted = "".join(c["choices"][0]["delta"].get("content") or "" for c in parse_sse(waited))
    assert counted == "one two three four five six seven eight nine ten"


def test_a_request_for_more_generations_than_the_engine_runs_at_once_still_runs(http: httpx.Client) -> None:
    """n=3 on an engine that runs one generation at a time: it counts as three, and runs when the engine is
    free, rather than never."""
    body = _chat("Count to ten.", stream=False) | {"n": 3, "max_tokens": 3}
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert [c["message"]["content"] for c in response.json()["choices"]] == ["one two three"] * 3
