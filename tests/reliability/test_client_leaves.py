"""A non-streaming request whose client left stops generating (issue #19, outcome 5), through the HAProxy
that Serve puts in front of the ingress: it must see the client's close and pass it on, which Serve's
configuration (`option splice-request`) hides about half the time unless HAProxy runs without splice()
(serve_app/haproxy_without_splice.py). Each try gives up on an answer whose first token takes a minute;
the engine replica must have nothing in flight a few seconds later."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.reliability.conftest import SLOW_MODEL, FaultApp, engine_in_flight

pytestmark = pytest.mark.reliability

TRIES = 4
# Far below the minute the answer takes (PONDERING_DELAY_S), above the time to notice the close and cancel.
NOTICED_WITHIN_S = 10.0


def test_a_client_that_leaves_a_non_streaming_request_stops_its_generation(fault_app: FaultApp) -> None:
    body = {"model": SLOW_MODEL, "messages": [{"role": "user", "content": "Take your time."}]}
    for attempt in range(TRIES):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{fault_app.base_url}/chat/completions", json=body, timeout=2)
        left = time.monotonic()
        while engine_in_flight(SLOW_MODEL) and time.monotonic() - left < NOTICED_WITHIN_S:
            time.sleep(0.25)
        assert engine_in_flight(SLOW_MODEL) == 0, f"try {attempt + 1}: still generating after {NOTICED_WITHIN_S} s"
