"""Limits per key and per team (issue #20): requests per minute and concurrent requests, enforced across
every ingress replica without a call per request.

One `Ledger` per endpoint holds the truth: a bucket per scope (`key:<name>`, `team:<name>`) that refills
its requests-per-minute limit continuously, and a count of concurrent-request slots. Each ingress replica's
`Limiter` *leases* from it: a batch of request permits (5% of the minute's limit) and one slot at a time,
which it then hands to requests locally; unused permits and idle slots go back after `HOLD_S`. So the
ledger is asked about once per batch, not per request, and never admits more than the limits: a permit or
a slot is taken from the ledger before a request uses it (the bound on over-admission is zero). The price
is the other way: permits parked in a replica that no longer needs them are unavailable to the others for
up to `HOLD_S` plus a flush (at most one batch per replica and scope).

Pure: no Ray. The ledger runs as a Serve deployment (`deployments/limits_ledger.py`); `LedgerClient` is how
a limiter reaches it (a handle, or the ledger itself in one process).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from serve_app.keys import Identity, Limits
from serve_app.protocol.errors import OpenAIError

logger = logging.getLogger("agent_serve.limits")

MINUTE_S = 60.0
HOLD_S = 1.0
"""How long a replica keeps permits and free slots it does not use before giving them back."""


class _Bucket:
    """Refills `limit` per minute, continuously; holds at most `limit`."""

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.level = float(limit)
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(float(self.limit), self.level + (now - self.at) * self.limit / MINUTE_S)
        self.at = now

    def seconds_until(self, level: float) -> float:
        return max(0.0, (level - self.level) * MINUTE_S / self.limit)


@dataclass(frozen=True)
class Exchange:
    """What a limiter asks of the ledger for one scope: take and give back permits and slots."""

    scope: str
    requests_per_minute: int | None
    concurrent_requests: int | None
    take_permits: int = 0
    return_permits: int = 0
    take_slots: int = 0
    return_slots: int = 0


@dataclass(frozen=True)
class Reply:
    permits: int  # granted
    slots: int  # granted
    remaining_requests: int | None  # the bucket's level after the exchange (None: no per-minute limit)
    reset_requests_s: float  # until the bucket is full again
    retry_after_s: float  # until one more permit, or until a slot may be free (a guess: slots free when requests end)


class Ledger:
    """The shared counts of one endpoint."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._slots_in_use: dict[str, int] = {}

    def exchange(self, asked: Exchange) -> Reply:
        now = self._clock()
        permits, remaining, reset_s, retry_s = 0, None, 0.0, 0.0
        if asked.requests_per_minute is not None:
            bucket = self._buckets.get(asked.scope)
            if bucket is None or bucket.limit != asked.requests_per_minute:  # new, or the keys file changed it
                bucket = self._buckets[asked.scope] = _Bucket(asked.requests_per_minute, now)
            bucket.refill(now)
            bucket.level = min(float(bucket.limit), bucket.level + asked.return_permits)
            permits = min(asked.take_permits, math.floor(bucket.level))
            bucket.level -= permits
            remaining, reset_s = math.floor(bucket.level), bucket.seconds_until(bucket.limit)
            if permits < asked.take_permits:
                retry_s = bucket.seconds_until(1.0)
        slots = 0
        in_use = max(0, self._slots_in_use.get(asked.scope, 0) - asked.return_slots)
        if asked.concurrent_requests is not None:
            slots = max(0, min(asked.take_slots, asked.concurrent_requests - in_use))
            if slots < asked.take_slots:
                retry_s = max(retry_s, 1.0)
        self._slots_in_use[asked.scope] = in_use + slots
        return Reply(permits, slots, remaining, reset_s, retry_s)


class LedgerClient(Protocol):
    async def exchange(self, asked: Exchange) -> Reply: ...


class LocalLedger:
    """The ledger in this process: for one replica, and for tests."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def exchange(self, asked: Exchange) -> Reply:
        return self._ledger.exchange(asked)


@dataclass
class _Lease:
    """What one replica holds of one scope."""

    limits: Limits
    permits: int = 0
    free_slots: int = 0
    last_used: float = 0.0
    last_reply: Reply | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class Admission:
    """A request let in: the scopes whose slots it holds, and the headers its response carries."""

    scopes: tuple[str, ...]
    headers: dict[str, str]


@dataclass(frozen=True)
class Refusal:
    """A request kept out: the 429, and the headers of the scope that refused it."""

    error: OpenAIError
    headers: dict[str, str]


class Limiter:
    """One ingress replica's side: admits a request or refuses it with a 429, from its leases."""

    def __init__(self, ledger: LedgerClient, clock: Callable[[], float]) -> None:
        self._ledger = ledger
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def admit(self, caller: Identity) -> Admission | Refusal:
        """Takes a permit and a slot in each of the caller's limited scopes, or none and a 429. Limits guard
        fairness, not access: if the ledger cannot be reached, the request goes in and the log says so."""
        scopes = _scopes(caller)
        if not scopes:
            return Admission((), {})
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever())
        taken: list[tuple[str, bool, bool]] = []  # scope, took a permit, took a slot
        headers: dict[str, str] = {}
        for scope, limits in scopes:
            lease = self._lease(scope, limits)
            async with lease.lock:
                try:
                    refusal = await self._take(scope, lease)
                except Exception:
                    logger.warning("limits of %s not enforced: the ledger did not answer", scope, exc_info=True)
                    continue
                if refusal is not None:
                    self._undo(taken)
                    return Refusal(refusal, _headers(lease))
                taken.append((scope, limits.requests_per_minute is not None, limits.concurrent_requests is not None))
                headers = _tighter(headers, _headers(lease))
        return Admission(tuple(scope for scope, _, slot in taken if slot), headers)

    def release(self, admission: Admission) -> None:
        now = self._clock()
        for scope in admission.scopes:
            lease = self._leases[scope]
            lease.free_slots += 1
            lease.last_used = now

    async def flush(self) -> None:
        """Gives back what was not used for `HOLD_S`: run every so often (the ingress does, every second)."""
        now = self._clock()
        for scope, lease in list(self._leases.items()):
            if now - lease.last_used < HOLD_S or not (lease.permits or lease.free_slots):
                continue
            async with lease.lock:
                returned_permits, returned_slots = lease.permits, lease.free_slots
                lease.permits = lease.free_slots = 0
                lease.last_reply = await self._ledger.exchange(
                    _exchange(scope, lease.limits, return_permits=returned_permits, return_slots=returned_slots)
                )

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(HOLD_S)
            try:
                await self.flush()
            except Exception:
                logger.warning("could not give leases back to the ledger", exc_info=True)

    def _lease(self, scope: str, limits: Limits) -> _Lease:
        lease = self._leases.get(scope)
        if lease is None:
            lease = self._leases[scope] = _Lease(limits)
        lease.limits = limits  # the keys file may have changed them: the ledger follows the new ones
        return lease

    async def _take(self, scope: str, lease: _Lease) -> OpenAIError | None:
        limits = lease.limits
        need_permit = limits.requests_per_minute is not None and lease.permits == 0
        need_slot = limits.concurrent_requests is not None and lease.free_slots == 0
        if need_permit or need_slot:
            batch = max(1, (limits.requests_per_minute or 0) // 20) if need_permit else 0
            reply = await self._ledger.exchange(
                _exchange(scope, limits, take_permits=batch, take_slots=1 if need_slot else 0)
            )
            lease.permits += reply.permits
            lease.free_slots += reply.slots
            lease.last_reply = reply
            short_of_permits = limits.requests_per_minute is not None and lease.permits == 0
            short_of_slots = limits.concurrent_requests is not None and lease.free_slots == 0
            if short_of_permits or short_of_slots:
                return _refusal(scope, limits, short_of_permits, reply)
        lease.last_used = self._clock()
        if limits.requests_per_minute is not None:
            lease.permits -= 1
        if limits.concurrent_requests is not None:
            lease.free_slots -= 1
        return None

    def _undo(self, taken: list[tuple[str, bool, bool]]) -> None:
        """A later scope refused: what the earlier ones gave this request goes back to their leases."""
        for scope, permit, slot in taken:
            lease = self._leases[scope]
            lease.permits += int(permit)
            if slot:
                lease.free_slots += 1


def _scopes(caller: Identity) -> list[tuple[str, Limits]]:
    scopes = [(f"key:{caller.name}", caller.limits)]
    if caller.team is not None:
        scopes.append((f"team:{caller.team}", caller.team_limits))
    return [(scope, limits) for scope, limits in scopes if limits.requests_per_minute or limits.concurrent_requests]


def _exchange(scope: str, limits: Limits, **amounts: int) -> Exchange:
    return Exchange(scope, limits.requests_per_minute, limits.concurrent_requests, **amounts)


def _refusal(scope: str, limits: Limits, per_minute: bool, reply: Reply) -> OpenAIError:
    kind, name = scope.split(":", 1)
    what = (
        f"requests per minute: limit {limits.requests_per_minute}"
        if per_minute
        else f"concurrent requests: limit {limits.concurrent_requests}"
    )
    wait = max(reply.retry_after_s, 0.001)
    message = f"Rate limit reached for {what} ({kind} {name}). Please try again in {format_duration(wait)}."
    return OpenAIError(429, message, "requests", None, "rate_limit_exceeded", wait)


def _headers(lease: _Lease) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*-requests` headers, for a scope with a per-minute limit."""
    reply, limit = lease.last_reply, lease.limits.requests_per_minute
    if limit is None or reply is None or reply.remaining_requests is None:
        return {}
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(reply.remaining_requests + lease.permits),
        "x-ratelimit-reset-requests": format_duration(reply.reset_requests_s),
    }


def _tighter(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    """Of two scopes' headers, those of the one with fewer requests left (a key's, or its team's)."""
    if not a or not b:
        return a or b
    return a if int(a["x-ratelimit-remaining-requests"]) <= int(b["x-ratelimit-remaining-requests"]) else b


def format_duration(seconds: float) -> str:
    """OpenAI's duration format in `x-ratelimit-reset-*` and its messages: `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole_minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if whole_minutes:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text
