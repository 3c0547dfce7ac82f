"""A dead ingress replica (issue #19, outcome 1): what its clients see, counted rather than promised. The
ingress owns the clients' connections (HAProxy forwards them to it), so nothing is left to write an error
event on a stream it carried: HAProxy can only close the client's connection, and a non-streaming request
gets HAProxy's 5xx. What this test holds the stack to: no client hangs, every stream that was cut is cut at
once and visibly (no `[DONE]`), and Serve's replacement serves new requests. docs/faults.md says what a
client and a load balancer should do."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import SLOW_MODEL, FaultApp, kill_replica
from tests.sse_client import parse_sse

pytestmark = pytest.mark.reliability

STREAMS = 4
WHOLE = 2
RECOVERY_LIMIT_S = 180  # liveness, not speed: how long the test waits for Serve's replacement at most
BODY: dict[str, Any] = {"model": SLOW_MODEL, "messages": [{"role": "user", "content": "Tell me a story."}]}


def _stream(base_url: str, streaming: threading.Event) -> str:
    received = b""
    try:
        with httpx.stream("POST", f"{base_url}/chat/completions", json=BODY | {"stream": True}, timeout=120) as r:
            assert r.status_code == 200
            for piece in r.iter_raw():
                received += piece
                streaming.set()
    except httpx.TransportError as error:
        return f"stream cut ({type(error).__name__})"
    if not received.rstrip().endswith(b"data: [DONE]"):
        return "stream cut (closed without [DONE])"
    return "stream error event" if parse_sse(received)[-1].get("error") else "stream complete"


def _whole(base_url: str) -> str:
    try:
        response = httpx.post(f"{base_url}/chat/completions", json=BODY, timeout=120)
    except httpx.TransportError as error:
        return f"whole cut ({type(error).__name__})"
    return "whole complete" if response.status_code == 200 else f"whole status {response.status_code}"


def _until_served(base_url: str) -> tuple[float, Counter[str]]:
    """Seconds until a new request is answered again, and what the ones before saw."""
    started, meanwhile = time.monotonic(), Counter[str]()
    while time.monotonic() - started < RECOVERY_LIMIT_S:
        if (outcome := _whole(base_url)) == "whole complete":
            return time.monotonic() - started, meanwhile
        meanwhile[outcome] += 1
        time.sleep(0.5)
    raise AssertionError(f"no answer {RECOVERY_LIMIT_S} s after the ingress replica died: {meanwhile}")


def test_a_dead_ingress_replica_cuts_what_it_carried_at_once_and_is_replaced(fault_app: FaultApp) -> None:
    streaming = [threading.Event() for _ in range(STREAMS)]
    with ThreadPoolExecutor(STREAMS + WHOLE) as pool:
        streams = [pool.submit(_stream, fault_app.base_url, event) for event in streaming]
        whole = [pool.submit(_whole, fault_app.base_url) for _ in range(WHOLE)]
        for event in streaming:
            assert event.wait(60), "a stream never started"
        killed = time.monotonic()
        kill_replica("OpenAIIngress")
        outcomes = Counter(future.result() for future in streams + whole)
        ended_within_s = time.monotonic() - killed
    served_within_s, meanwhile = _until_served(fault_app.base_url)
    print(f"\ningress killed: {dict(outcomes)}; all ended {ended_within_s:.1f} s after the kill")
    print(f"new requests answered again {served_within_s:.1f} s after that; before: {dict(meanwhile)}")
    assert not [o for o in outcomes + meanwhile if "Timeout" in o], (outcomes, meanwhile)  # nobody hangs
    assert not [o for o in outcomes if o == "stream complete"], outcomes  # the ~9 s answers cannot finish
