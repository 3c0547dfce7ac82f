"""Stream plumbing: batching a token stream for Ray, merging several streams.

Batching a token stream for its trip across Ray, without delaying the first token.

Each item that crosses a Ray boundary costs a serialization and a message, so a fast engine's stream
is grouped: the first item is sent at once (batching must add nothing to time-to-first-token); later
items that arrive within `interval_s` of the previous send travel together. When tokens come slower
than the interval, every item is still sent the moment it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import AsyncIterator, Sequence, TypeVar

T = TypeVar("T")
_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def batched(source: AsyncIterator[T], interval_s: float) -> AsyncIterator[list[T]]:
    """Yield lists of consecutive items of `source`; closing this generator cancels `source`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
        except Exception as exc:  # handed to the consumer, re-raised there
            queue.put_nowait(_Failure(exc))
        else:
            queue.put_nowait(_END)

    pump_task = asyncio.create_task(pump())
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
                yield batch  # type: ignore[misc]
                last_send = loop.time()
            for item in items:
                if isinstance(item, _Failure):
                    raise item.error
                if item is _END:
                    return
    finally:
        pump_task.cancel()  # consumer gone: stop the source (the engine aborts the request)
        with contextlib.suppress(asyncio.CancelledError):
            await pump_task


async def accepted_then_batched(frames: AsyncIterator[bytes], interval_s: float) -> AsyncIterator[bytes]:
    """The first item (the request was accepted) alone and at once, then the rest batched.

    Kept apart so that it neither waits for the first token nor opens a batching interval that would
    hold the first token back.
    """
    first = await anext(frames, None)
    if first is None:
        return
    yield first
    async for batch in batched(frames, interval_s):
        yield b"".join(batch)


async def merged(sources: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several streams as they come, tagged with their stream's position; closing cancels all."""
    if len(sources) == 1:  # the common case needs no tasks
        async for item in sources[0]:
            yield 0, item
        return
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump(position: int, source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                queue.put_nowait((position, item))
        except Exception as exc:
            queue.put_nowait(_Failure(exc))
        else:
            queue.put_nowait(_END)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(sources)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, _Failure):
                raise item.error
            else:
                yield item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
