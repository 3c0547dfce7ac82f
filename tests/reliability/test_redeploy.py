"""Redeploys under load (issue #19, outcome 6): the app's config is deployed changed while streams run, and
nothing is lost. Any change of an application's `args` restarts all its replicas — engines included (Serve's
code version hashes the args) — so one redeploy covers both kinds: new ingress replicas (HAProxy reloads)
and new engine replicas. Four streams of ~9 s and one of ~150 s (longer than HAProxy's default drain of
120 s) run across it, and a probe sends short requests back to back: every stream and every probe completes.
The test leaves the changed app running (an equivalent one) rather than paying for a second restart."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import SLOW_MODEL, FaultApp
from tests.reliability.test_replica_death import STREAMS, _stream
from tests.sse_client import parse_sse

pytestmark = pytest.mark.reliability

BODY: dict[str, Any] = {"model": SLOW_MODEL, "messages": [{"role": "user", "content": "Tell me a story."}]}
VERY_LONG: dict[str, Any] = {"model": SLOW_MODEL, "messages": [{"role": "user", "content": "A very long story."}]}


def _changed(args: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(args)
    changed["server"]["keep_alive_interval_s"] = 1.5
    return changed


def _probe(base_url: str, stop: threading.Event, outcomes: list[tuple[float, int | str]]) -> None:
    """Short requests back to back during the redeploy: when nothing answered, and that nothing was lost."""
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            status: int | str
            try:
                status = client.post(f"{base_url}/chat/completions", json=BODY | {"max_tokens": 2}).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            outcomes.append((time.monotonic(), status))


def test_a_redeploy_under_load_loses_nothing(fault_app: FaultApp) -> None:
    streaming = [threading.Event() for _ in range(STREAMS + 1)]
    stop = threading.Event()
    probed: list[tuple[float, int | str]] = []
    with ThreadPoolExecutor(STREAMS + 2) as pool:
        streams = [pool.submit(_stream, fault_app.base_url, BODY, event) for event in streaming[:STREAMS]]
        very_long = pool.submit(_stream, fault_app.base_url, VERY_LONG, streaming[STREAMS])
        probe = pool.submit(_probe, fault_app.base_url, stop, probed)
        for event in streaming:
            assert event.wait(60), "a stream never started"
        fault_app.deploy(_changed(fault_app.args))
        bodies = [future.result() for future in streams]
        stop.set()
        probe.result()
        bodies.append(very_long.result())

    for received in bodies:
        chunks = parse_sse(received)
        assert "error" not in chunks[-1] and chunks[-1]["choices"][0]["finish_reason"] == "stop", received[-300:]
    assert probed and all(status == 200 for _, status in probed), sorted({s for _, s in probed}, key=str)
    gaps = [later - earlier for (earlier, _), (later, _) in zip(probed, probed[1:], strict=False)]
    print(f"longest time without an answer during the redeploy: {max(gaps):.2f} s")
