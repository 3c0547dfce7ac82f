"""A replica dies mid-stream (issue #19, outcome 1; R4.8, R5.2): `ray.kill` of the engine's, the tool-parsing or
the structured-output replica while it carries four streams and two non-streaming requests. Every stream ends
with an error event and `[DONE]`, every non-streaming request gets a 503 with `Retry-After`, and Serve's
replacement serves the same request again."""

from __future__ import annotations

import json
import threading
import time
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

_TOOL = {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}
_PLAIN = {"messages": [{"role": "user", "content": "Tell me a story."}]}
_TOOLS = {"messages": [{"role": "user", "content": "Use the tool."}], "tools": [_TOOL]}
# The deployment whose replica is killed, and a body whose path passes through it.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "engine": (f"LLMServer:{SLOW_MODEL}", _PLAIN),
    "engine behind tool parsing": (f"LLMServer:{SLOW_MODEL}", _TOOLS),
    "tool parsing": ("ToolParsing", _TOOLS),
    "structured output": (
        "StructuredOutput",
        {"messages": [{"role": "user", "content": "Answer as JSON."}], "response_format": {"type": "json_object"}},
    ),
}


def _stream(base_url: str, body: dict[str, Any], streaming: threading.Event) -> bytes:
    received = b""
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body | {"stream": True}, timeout=120) as response:
        assert response.status_code == 200
        for piece in response.iter_raw():
            received += piece
            if b"data: {" in received:
                streaming.set()
    return received


def _whole(base_url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base_url}/chat/completions", json=body, timeout=120)


def _served_again(base_url: str, body: dict[str, Any]) -> None:
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while (response := _whole(base_url, body)).status_code != 200:
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        time.sleep(1)
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "tool_calls", "length")


@pytest.mark.parametrize("stage", list(CASES))
def test_a_replica_killed_mid_stream_ends_every_request_cleanly(fault_app: FaultApp, stage: str) -> None:
    deployment, fields = CASES[stage]
    body = {"model": SLOW_MODEL} | fields
    _served_again(fault_app.base_url, body)  # the previous test's replacement is up
    with ThreadPoolExecutor(STREAMS + WHOLE) as pool:
        # One request at a time: Serve's router counts a request still being assigned as queued, and the
        # structured-output stage lets only 2 wait (for the overload test), so a burst of 6 may be shed.
        streams = []
        for _ in range(STREAMS):
            streaming = threading.Event()
            streams.append(pool.submit(_stream, fault_app.base_url, body, streaming))
            assert streaming.wait(60), "a stream never started"
        whole = [pool.submit(_whole, fault_app.base_url, body) for _ in range(WHOLE)]
        time.sleep(1)  # the non-streaming requests reach the replica
        kill_replica(deployment)
        bodies = [future.result() for future in streams]
        responses = [future.result() for future in whole]

    for received in bodies:
        chunks = parse_sse(received)  # asserts `[DONE]` last
        error = chunks[-1].get("error")
        assert error is not None, f"the stream ended without an error event: {received[-300:]!r}"
        assert error["code"] == "service_unavailable", error
    for response in responses:
        assert response.status_code == 503, response.text
        assert float(response.headers["retry-after"]) > 0 and int(response.headers["retry-after-ms"]) > 0
        assert json.loads(response.text)["error"]["code"] == "service_unavailable"
    _served_again(fault_app.base_url, body)
