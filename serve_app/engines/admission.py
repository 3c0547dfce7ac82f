"""Admission to an engine: how many generations it runs at once, and how many requests may wait for room.

Requests reach the engine replica at once (Serve lets far more in than the engine runs), are judged there
(template, context window, vLLM's own checks) and only then wait here. So whatever the wait, a request the
engine would refuse is refused before a stream is committed, and a stream that waits has already been
judged good. Waiting here instead of in Serve's router also lets one request count for what it costs: a
generation per prompt and per `n`.

`AdmittedEngine` wraps an engine: `refusal` says "full, retry" (503 with `Retry-After`) when too many
requests already wait, and `generate` waits its turn, first come first served, before the engine sees the
request. Pure asyncio; no Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from serve_app.engines.base import Engine, GenerationDelta, GenerationRequest
from serve_app.protocol.errors import OpenAIError, unavailable


class Admission:
    """A first-come-first-served weighted semaphore: `weight` places out of `max_running`.

    A request heavier than the whole capacity runs when nothing else does, rather than never. Later
    requests do not overtake a waiting heavy one: that keeps the order fair and starvation out.
    """

    def __init__(self, max_running: int) -> None:
        self.max_running = max_running
        self.running = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for room."""
        return len(self._waiters)

    @property
    def waiting_weight(self) -> int:
        """Generations waiting for room (what the queue depth counts)."""
        return sum(weight for weight, _ in self._waiters)

    def _fits(self, weight: int) -> bool:
        return self.running == 0 or self.running + weight <= self.max_running

    def runs_now(self, weight: int) -> bool:
        """Whether a request of this weight would start at once, without waiting."""
        return not self._waiters and self._fits(weight)

    async def acquire(self, weight: int) -> None:
        if self.runs_now(weight):
            self.running += weight
            return
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, ticket)
        self._waiters.append(entry)
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():  # admitted in the same moment it was cancelled
                self.release(weight)
            else:
                self._waiters.remove(entry)
                self._admit()  # a heavy request that left may have held lighter ones back
            raise

    def release(self, weight: int) -> None:
        self.running -= weight
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            weight, ticket = self._waiters.popleft()
            self.running += weight
            ticket.set_result(None)


class AdmittedEngine(Engine):
    """`engine`, with at most `max_running` generations in it and at most `max_waiting` requests waiting.
    `on_wait` is told how long each request waited for room, in seconds (the queue-time metric)."""

    def __init__(
        self,
        engine: Engine,
        model_id: str,
        max_running: int,
        max_waiting: int | None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._engine = engine
        self._model_id = model_id
        self._admission = Admission(max_running)
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
        await self._admission.acquire(weight)
        try:
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - arrived)
            async for delta in self._engine.generate(request):
                yield delta
        finally:
            self._admission.release(weight)

    def lost(self) -> bool:
        return self._engine.lost()

    def num_unfinished_requests(self) -> int:
        """What the engine holds, and the generations waiting to get in: the queue depth autoscaling reads."""
        return self._engine.num_unfinished_requests() + self._admission.waiting_weight

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def shutdown(self) -> None:
        await self._engine.shutdown()
