"""Admission to an engine: how many generations it runs at once, and how many requests may wait for room.

Requests reach the engine replica at once (Serve lets far more in than the engine runs), are judged there
(template, context window, vLLM's own checks) and only then wait here. So whatever the wait, a request the
engine would refuse is refused before a stream is committed, and a stream that waits has already been
judged good. Waiting here instead of in Serve's router also lets one request count for what it costs: a
generation per prompt and per `n`.

`AdmittedEngine` wraps an engine: once a request is judged, `hold` takes its places (in the engine or in
line) or says "full, retry" (503 with `Retry-After`) when too many requests already wait, and `generate`
waits its turn (by API key, fairly: `Admission`) before the engine sees the request. Pure asyncio; no Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from serve_app.engines.base import Engine, GenerationDelta, GenerationRequest
from serve_app.protocol.errors import OpenAIError, unavailable


@dataclass(eq=False)
class Place:
    """A request's place in an engine's admission: in the engine once its `ticket` is done, in line until then."""

    weight: int
    caller: str
    priority: int
    arrival: int
    entered_at: float  # time.monotonic(): when it got in line, for the queue-time metric
    ticket: asyncio.Future[None]
    left: bool = False


class Admission:
    """A weighted semaphore: `weight` places out of `max_running`, handed to waiting requests fairly.

    Fair (the default): when room frees, the next to go in is the first waiting request of the caller (an
    API key) that has the fewest generations running, among the callers of the best (lowest) priority that
    wait; ties go to the one that came first. So a key with 32 requests in flight does not make another
    key's single request wait behind all of them: the keys take turns, and a key's own requests keep their
    order. Not fair: one queue, first come first served.

    A request heavier than the whole capacity runs when nothing else does, rather than never. The request
    chosen next is not overtaken by a lighter one that would fit: that keeps starvation out.

    A place is taken at once, without awaiting (`enter`), so that whoever decides to let a request in counts it
    in the same step; it is waited for with `wait` and given back with `leave`, whether it ran or waited.
    """

    def __init__(self, max_running: int, fair: bool = True) -> None:
        self.max_running = max_running
        self.fair = fair
        self.running = 0
        self._running_by: dict[str, int] = {}
        self._waiters: list[Place] = []  # in arrival order
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

    def enter(self, weight: int, caller: str = "", priority: int = 0) -> Place:
        """A place for a request: in the engine if it runs now, else in line."""
        self._arrivals += 1
        ticket = asyncio.get_running_loop().create_future()
        place = Place(weight, caller, priority, self._arrivals, time.monotonic(), ticket)
        if self.runs_now(weight):
            self._take(place)
        else:
            self._waiters.append(place)
        return place

    async def wait(self, place: Place) -> None:
        """Until the place is in the engine. Cancelled meanwhile (the client left), it is given back."""
        try:
            await place.ticket
        except asyncio.CancelledError:
            self.leave(place)
            raise

    def leave(self, place: Place) -> None:
        """Give the place back: its room in the engine to the next in line, or its place in line. Once."""
        if place.left:
            return
        place.left = True
        if place.ticket.done() and not place.ticket.cancelled():  # in the engine (maybe admitted as it left)
            self.running -= place.weight
            self._running_by[place.caller] -= place.weight
            if not self._running_by[place.caller]:
                del self._running_by[place.caller]
            self._admit()
            return
        place.ticket.cancel()
        if place in self._waiters:  # (`_admit` may have dropped it already)
            self._waiters.remove(place)
            self._admit()  # a heavy request that left may have held lighter ones back

    def _take(self, place: Place) -> None:
        self.running += place.weight
        self._running_by[place.caller] = self._running_by.get(place.caller, 0) + place.weight
        place.ticket.set_result(None)

    def _next(self) -> Place:
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
            self._take(waiter)


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
        self._held: dict[str, Place] = {}  # by request id: places taken by `hold`, not yet taken up by `generate`

    async def start(self) -> None:
        await self._engine.start()

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    def refusal(self, request: GenerationRequest) -> OpenAIError | None:
        return self._engine.refusal(request)

    @contextmanager
    def hold(self, generations: Sequence[GenerationRequest]) -> Iterator[OpenAIError | None]:
        """Takes the generations' places now, in the engine or in line, or refuses them all ("full, retry": 503
        with `Retry-After`) when one would have to wait and `max_waiting` requests already do.

        Called on the event loop in the same step that the request's plan came back, so the bound is exact:
        checked when each generation's stream began, requests planned while the loop was busy with other
        streams all saw the same queue, and a burst passed the bound together. `generate` takes the place up;
        one not taken up by the end (the client left before its stream began) is given back then."""
        admission = self._admission
        refusal = None
        try:
            for generation in generations:
                weight = generation.sampling.n
                if self._max_waiting is not None and admission.waiting >= self._max_waiting:
                    if not admission.runs_now(weight):
                        refusal = unavailable(
                            f"Model '{self._model_id}' is at capacity: {admission.running} generations are running "
                            f"and {admission.waiting} requests are waiting. Retry shortly.",
                            retry_after_s=1.0,
                        )
                        break
                self._held[generation.request_id] = admission.enter(weight, generation.caller, generation.priority)
            if refusal is not None:  # now, not as the caller leaves: a stream holds the refusal across a yield
                self._give_back(generations)
            yield refusal
        finally:
            self._give_back(generations)

    def _give_back(self, generations: Sequence[GenerationRequest]) -> None:
        for generation in generations:
            if (place := self._held.pop(generation.request_id, None)) is not None:
                self._admission.leave(place)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        place = self._held.pop(request.request_id, None)
        if place is None:  # not held beforehand (a caller without a plan: benchmarks, tests)
            place = self._admission.enter(request.sampling.n, request.caller, request.priority)
        try:
            await self._admission.wait(place)
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - place.entered_at)
            async for delta in self._engine.generate(request):
                yield delta
        finally:
            self._admission.leave(place)

    def lost(self) -> bool:
        return self._engine.lost()

    def num_unfinished_requests(self) -> int:
        """What the engine holds, and the generations waiting to get in: the queue depth autoscaling reads."""
        return self._engine.num_unfinished_requests() + self._admission.waiting_weight

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def shutdown(self) -> None:
        await self._engine.shutdown()
