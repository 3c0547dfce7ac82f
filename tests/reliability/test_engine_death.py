"""vLLM's EngineCore dies or hangs (issue #19, outcomes 2 and 3): SIGKILL, or SIGSTOP, of the process while it
generates four streams and a non-streaming answer. A death is known at once, a hang after the stall deadline
(`stall_timeout_s`: the engine has requests and produces nothing), which kills the hung process. Then the
streams end with a `service_unavailable` error event and `[DONE]`, the waiting answer is a 503, the replica
leaves (so nothing is routed into the dead engine until a health check notices) and Serve's replacement
serves again; no process of the dead engine is left."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest

from tests.reliability.conftest import APP, STALL_TIMEOUT_S, VLLM_MODEL, FaultApp
from tests.reliability.test_replica_death import STREAMS, _served_again, _stream, _whole
from tests.sse_client import parse_sse

pytestmark = pytest.mark.reliability

# Long answers: ignore_eos keeps the small model generating until the cap.
BODY: dict[str, Any] = {
    "model": VLLM_MODEL,
    "messages": [{"role": "user", "content": "Tell me a long story."}],
    "max_tokens": 1500,
    "ignore_eos": True,
}


def _engine_cores() -> list[psutil.Process]:
    """The EngineCore processes of the model's replicas (vLLM names its process `VLLM::EngineCore`)."""
    replicas = [
        p
        for p in psutil.process_iter(["cmdline"])
        if f"ServeReplica:{APP}:LLMServer:{VLLM_MODEL}" in " ".join(p.info["cmdline"] or [])
    ]
    return [
        child
        for replica in replicas
        for child in replica.children(recursive=True)
        if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name()
    ]


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_dead_or_hung_engine_core_ends_every_request_cleanly_and_is_replaced(
    fault_app: FaultApp, fault: signal.Signals
) -> None:
    _served_again(fault_app.base_url, BODY | {"max_tokens": 4})
    (core,) = _engine_cores()
    started = core.create_time()  # orphans older than this app's engine are another run's (a killed benchmark)
    streaming = [threading.Event() for _ in range(STREAMS)]
    with ThreadPoolExecutor(STREAMS + 1) as pool:
        streams = [pool.submit(_stream, fault_app.base_url, BODY, event) for event in streaming]
        whole = pool.submit(_whole, fault_app.base_url, BODY)
        for event in streaming:
            assert event.wait(120), "a stream never started"
        os.kill(core.pid, fault)
        faulted = time.monotonic()
        bodies = [future.result() for future in streams]
        response = whole.result()
    if fault == signal.SIGSTOP:  # not before the deadline: a slow engine is not a hung one
        assert time.monotonic() - faulted >= STALL_TIMEOUT_S

    for received in bodies:
        error = parse_sse(received)[-1].get("error")
        assert error is not None and error["code"] == "service_unavailable", received[-300:]
    assert response.status_code == 503 and float(response.headers["retry-after"]) > 0, response.text
    assert response.json()["error"]["code"] == "service_unavailable"

    _served_again(fault_app.base_url, BODY | {"max_tokens": 4})
    assert not core.is_running()
    cores = _engine_cores()
    assert len(cores) == 1 and cores[0].pid != core.pid  # the replacement's, and no other
    orphans = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"]
        and "EngineCore" in " ".join(p.info["cmdline"])
        and p.ppid() == 1
        and p.create_time() >= started
    ]
    assert orphans == []
