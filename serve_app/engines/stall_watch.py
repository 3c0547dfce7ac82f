"""When is an engine hung? vLLM's own health check answers from the API process and does not notice an
EngineCore that stopped stepping (issue #19): a stopped process, a wedged kernel, a deadlock. The watch
says "stalled" when the engine has work and has not produced anything for `timeout_s`."""

from __future__ import annotations

import time
from collections.abc import Callable


class StallWatch:
    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout_s = timeout_s
        self._clock = clock
        self._last_move = clock()

    def moved(self) -> None:
        """The engine produced output."""
        self._last_move = self._clock()

    def stalled(self, busy: bool) -> bool:
        """Asked periodically: time spent idle is no stall, so the count starts when work arrives."""
        if not busy:
            self._last_move = self._clock()
            return False
        return self._clock() - self._last_move > self._timeout_s
