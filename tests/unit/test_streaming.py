"""Stream plumbing: batching across Ray (the first item never waits), merging streams, marking silences."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve_app.streaming import batched


async def _timed(items: list[tuple[float, str]], log: list[str] | None = None) -> AsyncIterator[str]:
    try:
        for delay, item in items:
            await asyncio.sleep(delay)
            yield item
    finally:
        if log is not None:
            log.append("source closed")


async def _collect(source: AsyncIterator[str], interval: float) -> list[tuple[float, list[str]]]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    return [(loop.time() - start, batch) async for batch in batched(source, interval)]


def test_first_item_is_sent_without_waiting_for_the_interval() -> None:
    batches = asyncio.run(_collect(_timed([(0, "first"), (0, "a"), (0, "b")]), interval=5.0))
    assert batches[0][1] == ["first"]
    assert batches[0][0] < 1.0  # not held for the 5 s interval
    assert [item for _, batch in batches for item in batch] == ["first", "a", "b"]


def test_items_arriving_within_the_interval_travel_together() -> None:
    source = _timed([(0, "t0")] + [(0.001, f"t{i}") for i in range(1, 20)])
    batches = asyncio.run(_collect(source, interval=0.2))
    assert batches[0][1] == ["t0"]
    assert len(batches) <= 3  # 19 items within ~20 ms: grouped, not 19 sends
    assert [item for _, batch in batches for item in batch] == [f"t{i}" for i in range(20)]


def test_slow_items_are_sent_one_by_one() -> None:
    batches = asyncio.run(_collect(_timed([(0.05, "a"), (0.05, "b"), (0.05, "c")]), interval=0.01))
    assert [batch for _, batch in batches] == [["a"], ["b"], ["c"]]


def test_source_errors_reach_the_consumer_after_earlier_items() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "ok"
        raise RuntimeError("engine died")

    async def run() -> list[list[str]]:
        received = []
        with pytest.raises(RuntimeError, match="engine died"):
            async for batch in batched(failing(), 0.0):
                received.append(batch)
        return received

    assert asyncio.run(run()) == [["ok"]]


def test_closing_the_consumer_stops_the_source() -> None:
    """A client that goes away must stop generation upstream (the engine aborts the request)."""
    log: list[str] = []

    async def run() -> None:
        stream = batched(_timed([(0, "a")] + [(0.01, "x")] * 1000, log), 0.0)
        assert await anext(stream) == ["a"]
        await stream.aclose()

    asyncio.run(run())
    assert log == ["source closed"]


def test_merged_interleaves_and_tags_sources() -> None:
    from serve_app.streaming import merged

    async def run() -> list[tuple[int, str]]:
        fast, slow = _timed([(0.01, "f1"), (0.01, "f2")]), _timed([(0.015, "s1")])
        return [item async for item in merged([fast, slow])]

    items = asyncio.run(run())
    assert sorted(items) == [(0, "f1"), (0, "f2"), (1, "s1")]
    assert items.index((1, "s1")) == 1  # arrived between the fast ones, not after them


def test_silences_are_marked_and_items_pass_in_order() -> None:
    """R4.7's keep-alives come from here: a `None` for each interval without an item, none while busy."""
    from serve_app.streaming import marking_silences

    async def run() -> list[str | None]:
        return [item async for item in marking_silences(_timed([(0, "a"), (0.35, "b"), (0, "c"), (0, "d")]), 0.1)]

    items = asyncio.run(run())
    assert [item for item in items if item is not None] == ["a", "b", "c", "d"]
    assert items[0] == "a" and items[-3:] == ["b", "c", "d"]
    assert 2 <= items.count(None) <= 4  # ~3 silences of 0.1 s in 0.35 s, whatever the scheduling jitter


def test_marking_silences_hands_over_errors_and_stops_the_source_when_closed() -> None:
    from serve_app.streaming import marking_silences

    async def failing() -> AsyncIterator[str]:
        yield "ok"
        raise RuntimeError("engine died")

    async def errors() -> list[str | None]:
        received: list[str | None] = []
        with pytest.raises(RuntimeError, match="engine died"):
            async for item in marking_silences(failing(), 10.0):
                received.append(item)
        return received

    assert asyncio.run(errors()) == ["ok"]

    log: list[str] = []

    async def close_early() -> None:
        stream = marking_silences(_timed([(0, "a")] + [(0.01, "x")] * 1000, log), 10.0)
        assert await anext(stream) == "a"
        await stream.aclose()

    asyncio.run(close_early())
    assert log == ["source closed"]
