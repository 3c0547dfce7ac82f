"""A non-streaming request whose client left stops generating (issue #19, outcome 5), through the HAProxy
that Serve puts in front of the ingress: it must see the client's close and pass it on, which Serve's
configuration (`option splice-request`) hides about half the time unless HAProxy runs without splice()
(serve_app/haproxy_without_splice.py). Each try gives up on an answer whose first token takes a minute;
the engine replica must have nothing in flight a few seconds later."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.reliability.conftest import APP, SLOW_MODEL, FaultApp

pytestmark = pytest.mark.reliability

TRIES = 4
# Far below the minute the answer takes (PONDERING_DELAY_S), above the time to notice the close and cancel.
NOTICED_WITHIN_S = 10.0


def _in_flight() -> int:
    from ray import serve

    from serve_app.autoscaling import ENGINE_QUEUE_METRIC

    engine = serve.get_deployment_handle(f"LLMServer:{SLOW_MODEL}", app_name=APP)
    return int(engine.record_autoscaling_stats.remote().result()[ENGINE_QUEUE_METRIC])


def test_a_client_that_leaves_a_non_streaming_request_stops_its_generation(fault_app: FaultApp) -> None:
    body = {"model": SLOW_MODEL, "messages": [{"role": "user", "content": "Take your time."}]}
    for attempt in range(TRIES):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{fault_app.base_url}/chat/completions", json=body, timeout=2)
        left = time.monotonic()
        while _in_flight() and time.monotonic() - left < NOTICED_WITHIN_S:
            time.sleep(0.25)
        assert _in_flight() == 0, f"try {attempt + 1}: still generating {NOTICED_WITHIN_S} s after the client left"
