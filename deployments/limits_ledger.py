"""`LimitsLedger`: the endpoint's one set of counts for per-key and per-team limits (`serve_app/rate_limits.py`).
Ingress replicas lease from it in batches, so it is asked about once per batch, not once per request."""

from __future__ import annotations

import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.rate_limits import Exchange, Ledger, Reply


@serve.deployment(num_replicas=1, max_ongoing_requests=10_000)
class LimitsLedger:
    """One replica: two would each count a part. If it dies, Serve replaces it; the new one starts full
    (every bucket at its limit), and the ingress replicas admit without limits while none answers."""

    def __init__(self) -> None:
        self._ledger = Ledger(time.monotonic)

    def exchange(self, asked: Exchange) -> Reply:
        return self._ledger.exchange(asked)


class HandleLedger:
    """A limiter's way to the ledger deployment."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def exchange(self, asked: Exchange) -> Reply:
        reply: Reply = await self._handle.exchange.remote(asked)
        return reply
