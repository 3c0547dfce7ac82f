"""Stream plumbing: batching a token stream for Ray, merging several streams, marking silences.

Batching a token stream for its trip across Ray, without delaying the first token.

Each item that crosses a Ray boundary costs a serialization and a message, so a fast engine's stream
is grouped: the first item is sent at once (batching must add nothing to time-to-first-token); later
items that arrive within `interval_s` of the previous send travel together. When tokens come slower
than the interval, every item is still sent the moment it arrives.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TypeVar, cast

T = TypeVar("T")
_END = object()
_IDLE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _pump(
    source: AsyncIterator[T], queue: asyncio.Queue[object], wrap: Callable[[T], object] = lambda item: item
) -> None:
    """Move `source` into `queue`, then `_END`; an exception is handed over as a `_Failure` to re-raise."""
    try:
        async for item in source:
            queue.put_nowait(wrap(item))
    except Exception as exc:
        queue.put_nowait(_Failure(exc))
    else:
        queue.put_nowait(_END)


async def _stop(tasks: Sequence[asyncio.Task[None]]) -> None:
    """The consumer is gone: cancel the pumps, which closes their sources (the engine aborts the request)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def batched(source: AsyncIterator[T], interval_s: float) -> AsyncGenerator[list[T], None]:
    """Yield lists of consecutive items of `source`; closing this generator cancels `source`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    pump_task = asyncio.create_task(_pump(source, queue))
    last_send = -math.inf
    try:
        while True:
            items = [await queue.get()]
            wait = last_send + interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            while not queue.empty():
                items.append(queue.get_nowait())
            batch = [item for item in items if item is not _END and not isinstance(item, _Failure)]
            if batch:
                yield cast(list[T], batch)
                last_send = loop.time()
            for item in items:
                if isinstance(item, _Failure):
                    raise item.error
                if item is _END:
                    return
    finally:
        await _stop([pump_task])


async def accepted_then_batched(frames: AsyncIterator[bytes | T], interval_s: float) -> AsyncIterator[bytes | T]:
    """The first item (the request was accepted) alone and at once, then the rest batched: the frames of a
    batch joined into one item, any other value (a stream's closing `UsageReport`) after them as it is.

    Kept apart so that it neither waits for the first token nor opens a batching interval that would
    hold the first token back.
    """
    first = await anext(frames, None)
    if first is None:
        return
    yield first
    async for batch in batched(frames, interval_s):
        if joined := b"".join(item for item in batch if isinstance(item, bytes)):
            yield joined
        for item in batch:
            if not isinstance(item, bytes):
                yield item


def _tagged(position: int) -> Callable[[T], tuple[int, T]]:
    """Wrap an item of the stream at `position` as `(position, item)`."""
    return lambda item: (position, item)


async def merged(sources: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several streams as they come, tagged with their stream's position; closing cancels all."""
    if len(sources) == 1:  # the common case needs no tasks
        async for item in sources[0]:
            yield 0, item
        return
    queue: asyncio.Queue[object] = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(source, queue, _tagged(position))) for position, source in enumerate(sources)]
    try:
        remaining = len(tasks)
        while remaining:
            entry = await queue.get()
            if entry is _END:
                remaining -= 1
            elif isinstance(entry, _Failure):
                raise entry.error
            else:
                yield cast(tuple[int, T], entry)
    finally:
        await _stop(tasks)


async def marking_silences(source: AsyncIterator[T], interval_s: float) -> AsyncGenerator[T | None, None]:
    """The items of `source`, and `None` each time `interval_s` passes without one; closing cancels `source`.

    This runs once per streamed token, so it costs one task and one queue per stream and a timer only
    while waiting, rather than a task and a timed wait per item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    pump_task = asyncio.create_task(_pump(source, queue))
    try:
        while True:
            if queue.empty():
                silence = loop.call_later(interval_s, queue.put_nowait, _IDLE)
                try:
                    item = await queue.get()
                finally:
                    silence.cancel()
            else:
                item = queue.get_nowait()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield None if item is _IDLE else cast(T, item)
    finally:
        await _stop([pump_task])
