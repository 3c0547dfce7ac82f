"""Many clients (issue #19, outcome 7): a thousand streams waiting on a slow engine are held — keep-alives on
time, file descriptors and memory bounded, every answer delivered — and slow clients (bodies trickled a byte
at a time, a stream nobody reads) hold only their own connections while everyone else is served."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.reliability.conftest import CROWD, CROWD_MODEL, SLOW_MODEL, FaultApp, engine_in_flight
from tests.sse_client import parse_sse

pytestmark = pytest.mark.reliability

CROWD_BODY: dict[str, Any] = {"model": CROWD_MODEL, "messages": [{"role": "user", "content": "One of many."}]}
# The app's `keep_alive_interval_s` is 1 s: a silence of 10 is a keep-alive missed many times over.
LONGEST_SILENCE_S = 10.0
TRICKLERS = 20
TRICKLE_S = 12.0


@dataclass
class _Stream:
    status: int = 0
    body: bytes = b""
    arrivals: list[float] = field(default_factory=list)  # when each piece arrived, from the request's start

    def longest_silence(self) -> float:
        """The longest wait for a piece once the stream began (the first piece, the headers' keep-alive,
        comes after the request waited one interval, and after the crowd's connections were all opened)."""
        return max(b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False))


async def _crowd_stream(client: httpx.AsyncClient, url: str) -> _Stream:
    stream, started = _Stream(), time.monotonic()
    async with client.stream("POST", url, json=CROWD_BODY | {"stream": True}) as response:
        stream.status = response.status_code
        async for piece in response.aiter_raw():
            stream.arrivals.append(time.monotonic() - started)
            stream.body += piece
    return stream


async def _crowd(base_url: str) -> list[_Stream]:
    limits = httpx.Limits(max_connections=CROWD, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300.0)) as client:
        return await asyncio.gather(*(_crowd_stream(client, f"{base_url}/chat/completions") for _ in range(CROWD)))


def _ingress() -> psutil.Process:
    (process,) = [p for p in psutil.process_iter(["cmdline"]) if "OpenAIIngress" in " ".join(p.info["cmdline"] or [])]
    return process


def test_a_thousand_streams_waiting_on_a_slow_engine_are_held(fault_app: FaultApp) -> None:
    ingress = _ingress()
    before_fds, before_rss = ingress.num_fds(), ingress.memory_info().rss
    peak = {"fds": before_fds, "rss": before_rss}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak["fds"] = max(peak["fds"], ingress.num_fds())
            peak["rss"] = max(peak["rss"], ingress.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        streams = asyncio.run(_crowd(fault_app.base_url))
    finally:
        done.set()
        sampler.join()
    took = time.monotonic() - started
    # HAProxy keeps idle connections to the replica for reuse and closes half of them every 5 s.
    drained = time.monotonic()
    while (after_fds := ingress.num_fds()) - before_fds > 50 and time.monotonic() - drained < 120:
        time.sleep(1)

    silences = sorted(s.longest_silence() for s in streams)
    firsts = sorted(s.arrivals[0] for s in streams)
    grown_kib = (peak["rss"] - before_rss) / 1024
    print(
        f"\n{CROWD} streams in {took:.0f} s; first piece p50 {statistics.median(firsts):.2f} s, max "
        f"{firsts[-1]:.2f} s; longest silence per stream after it p50 {statistics.median(silences):.2f} s, "
        f"p99 {silences[int(len(silences) * 0.99)]:.2f} s, max {silences[-1]:.2f} s; ingress fds "
        f"{before_fds} -> peak {peak['fds']} -> {after_fds} {time.monotonic() - drained:.0f} s later; "
        f"RSS +{grown_kib / 1024:.0f} MiB at peak ({grown_kib / CROWD:.0f} KiB a stream)"
    )
    assert [s.status for s in streams] == [200] * CROWD
    for stream in streams:
        chunks = parse_sse(stream.body)  # asserts `[DONE]` last
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "ok"
    assert silences[-1] < LONGEST_SILENCE_S
    # One connection from HAProxy per stream, and no more; given back once the streams ended.
    assert peak["fds"] - before_fds <= CROWD * 1.1 + 100 and after_fds - before_fds <= 50
    assert grown_kib / CROWD < 1024


async def _trickle(host: str, port: int, path: str, body: bytes, until: float) -> int:
    """Sends the headers, then the body a byte at a time until `until` (the rest at once), then reads the status."""
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    writer.write(head.encode() + b"\r\n\r\n")
    sent = 0
    while time.monotonic() < until and sent < len(body) - 1:
        writer.write(body[sent : sent + 1])
        await writer.drain()
        sent += 1
        await asyncio.sleep(0.5)
    writer.write(body[sent:])
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def _never_reads(host: str, port: int, path: str) -> asyncio.StreamWriter:
    """Asks for a ~150 s stream and reads none of it: the socket buffers fill and the server must wait."""
    body = json.dumps(
        {"model": SLOW_MODEL, "messages": [{"role": "user", "content": "A very long story."}], "stream": True}
    ).encode()
    _, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    writer.write(head.encode() + b"\r\n\r\n" + body)
    await writer.drain()
    return writer


async def _slow_and_normal_clients(base_url: str) -> tuple[list[int], list[_Stream], list[int]]:
    url = urlsplit(base_url)
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, f"{url.path}/chat/completions"
    stalled = await _never_reads(host, port, path)
    until = time.monotonic() + TRICKLE_S
    tricklers = [
        asyncio.ensure_future(_trickle(host, port, path, json.dumps(CROWD_BODY).encode(), until))
        for _ in range(TRICKLERS)
    ]
    await asyncio.sleep(1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
        normal = await asyncio.gather(*(_crowd_stream(client, f"{base_url}/chat/completions") for _ in range(10)))
        whole = await asyncio.gather(*(client.post(f"{base_url}/chat/completions", json=CROWD_BODY) for _ in range(10)))
    normal_done = time.monotonic()
    assert normal_done < until, "the normal clients must finish while the slow ones are still slow"
    assert await asyncio.to_thread(engine_in_flight, SLOW_MODEL) == 1  # the unread stream: generated, held back
    stalled.close()
    return [r.status_code for r in whole], normal, await asyncio.gather(*tricklers)


def test_slow_clients_hold_only_their_own_connections(fault_app: FaultApp) -> None:
    whole, streams, trickled = asyncio.run(_slow_and_normal_clients(fault_app.base_url))
    assert whole == [200] * 10 and [s.status for s in streams] == [200] * 10
    assert all(parse_sse(s.body)[-1]["choices"][0]["finish_reason"] == "stop" for s in streams)
    assert trickled == [200] * TRICKLERS  # a slow body is waited for, then answered
    left = time.monotonic()
    while engine_in_flight(SLOW_MODEL) and time.monotonic() - left < 10:
        time.sleep(0.25)
    assert engine_in_flight(SLOW_MODEL) == 0  # the reader that never read has left: its generation stopped
