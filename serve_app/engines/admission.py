"""Admission to an engine: how many generations it runs at once, and how many requests may wait for room.

Requests reach the engine replica at once (Serve lets far more in than the engine runs), are judged there
(template, context window, vLLM's own checks) and only then wait here. So whatever the wait, a request the
engine would refuse is refused before a stream is committed, and a stream that waits has already been
judged good. Waiting here instead of in Serve's router also lets one request count for what it costs: a
generation per prompt and per `n`.

`AdmittedEngine` wraps an engine: `refusal` says "full, retry" (503 with `Retry-After`) when too many
requests already wait, and `generate` waits its turn (by API key, fairly: `Admission`) before the engine
sees the request. Pure asyncio; no Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from serve_app.engines.base import Engine, GenerationDelta, GenerationRequest
from serve_app.protocol.errors import OpenAIError, unavailable


@dataclass(eq=False)
class _Waiter:
    weight: int
    caller: str
    priority: int
    arrival: int
    ticket: asyncio.Future[None]


class Admission:
    """A weighted semaphore: `weight` places out of `max_running`, handed to waiting requests fairly.

    Fair (the default): when room frees, the next to go in is the first waiting request of the caller (an
    API key) that has the fewest generations running, among the callers of the best (lowest) priority that
    wait; ties go to the one that came first. So a key with 32 requests in flight does not make another
    key's single request wait behind all of them: the keys take turns, and a key's own requests keep their
    order. Not fair: one queue, first come first served.

    A request heavier than the whole capacity runs when nothing else does, rather than never. The request
    chosen next is not overtaken by a lighter one that would fit: that keeps starvation out.
    """

    def __init__(self, max_running: int, fair: bool = True) -> None:
        self.max_running = max_running
        self.fair = fair
        self.running = 0
        self._running_by: dict[str, int] = {}
        self._waiters: list[_Waiter] = []  # in arrival order
        self._arrivals = 0

    @property
    def waiting(self) -> int:
        """Requests waiting for room."""
        return len(self._waiters)

    @property
    def waiting_weight(self) -> int:
        """Generations waiting for room (what the queue depth counts)."""
        return sum(waiter.weight for waiter in self._waiters)

    def _fits(self, weight: int) -> bool:
        return self.running == 0 or self.running + weight <= self.max_running

    def runs_now(self, weight: int) -> bool:
        """Whether a request of this weight would start at once, without waiting."""
        return not self._waiters and self._fits(weight)

    async def acquire(self, weight: int, caller: str = "", priority: int = 0) -> None:
        if self.runs_now(weight):
            self._take(weight, caller)
            return
        self._arrivals += 1
        waiter = _Waiter(weight, caller, priority, self._arrivals, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter.ticket
        except asyncio.CancelledError:
            if waiter.ticket.done() and not waiter.ticket.cancelled():  # admitted in the same moment it was cancelled
                self.release(weight, caller)
            elif waiter in self._waiters:  # (`_admit` may have dropped it already)
                self._waiters.remove(waiter)
                self._admit()  # a heavy request that left may have held lighter ones back
            raise

    def release(self, weight: int, caller: str = "") -> None:
        self.running -= weight
        self._running_by[caller] -= weight
        if not self._running_by[caller]:
            del self._running_by[caller]
        self._admit()

    def _take(self, weight: int, caller: str) -> None:
        self.running += weight
        self._running_by[caller] = self._running_by.get(caller, 0) + weight

    def _next(self) -> _Waiter:
        if not self.fair:
            return self._waiters[0]
        return min(self._waiters, key=lambda w: (w.priority, self._running_by.get(w.caller, 0), w.arrival))

    def _admit(self) -> None:
        while self._waiters:
            waiter = self._next()
            if waiter.ticket.done():  # cancelled, its task not resumed yet: it takes no place
                self._waiters.remove(waiter)
                continue
            if not self._fits(waiter.weight):
                return
            self._waiters.remove(waiter)
            self._take(waiter.weight, waiter.caller)
            waiter.ticket.set_result(None)


class AdmittedEngine(Engine):
    """`engine`, with at most `max_running` generations in it and at most `max_waiting` requests waiting,
    fairly across callers or first come first served (`fair`). `on_wait` is told how long each request
    waited for room, in seconds (the queue-time metric)."""

    def __init__(
        self,
        engine: Engine,
        model_id: str,
        max_running: int,
        max_waiting: int | None,
        on_wait: Callable[[float], None] | None = None,
        fair: bool = True,
    ) -> None:
        self._engine = engine
        self._model_id = model_id
        self._admission = Admission(max_running, fair)
        self._max_waiting = max_waiting
        self._on_wait = on_wait

    async def start(self) -> None:
        await self._engine.start()

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    def refusal(self, request: GenerationRequest) -> OpenAIError | None:
        """Full: the request would have to wait, and too many already do. Checked when the request is
        planned, so only requests planned in the same moment can pass it together."""
        admission = self._admission
        if (
            self._max_waiting is not None
            and admission.waiting >= self._max_waiting
            and not admission.runs_now(request.sampling.n)
        ):
            return unavailable(
                f"Model '{self._model_id}' is at capacity: {admission.running} generations are running "
                f"and {admission.waiting} requests are waiting. Retry shortly.",
                retry_after_s=1.0,
            )
        return self._engine.refusal(request)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        weight = request.sampling.n
        arrived = time.monotonic()
        await self._admission.acquire(weight, request.caller, request.priority)
        try:
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - arrived)
            async for delta in self._engine.generate(request):
                yield delta
        finally:
            self._admission.release(weight, request.caller)

    def lost(self) -> bool:
        return self._engine.lost()

    def num_unfinished_requests(self) -> int:
        """What the engine holds, and the generations waiting to get in: the queue depth autoscaling reads."""
        return self._engine.num_unfinished_requests() + self._admission.waiting_weight

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def shutdown(self) -> None:
        await self._engine.shutdown()
