"""Limits per key and per team (issue #20): requests per minute, tokens per minute and concurrent requests,
enforced across every ingress replica without a call per request.

One `Ledger` per endpoint holds the truth: per scope (`key:<name>`, `team:<name>`) a bucket of requests and
one of tokens, each refilling its per-minute limit continuously, and a count of concurrent-request slots.
Each ingress replica's `Limiter` *leases* from it: a batch of request permits and of tokens (5% of the
minute's limit each) and one slot at a time, which it then hands to requests locally; what is not used
goes back after `HOLD_S`. So the ledger is asked about once per batch, not per request.

The bounds on over-admission:
- requests and concurrent requests: zero. A permit or a slot is taken from the ledger before a request
  uses it. The price is the other way: permits parked in a replica that no longer needs them are
  unavailable to the others for up to `HOLD_S` plus a flush (at most one batch per replica and scope).
- tokens: what a request costs is known only when it ends (its `usage`), so a request is admitted while the
  replica's token balance is positive and charged when it ends; the balance, and the ledger's bucket, may
  then go below zero, and nothing more is admitted until the debt has refilled. The overshoot is at most
  the tokens of the requests already running when the balance ran out (with a concurrency limit: at most
  that many requests' prompts and answers). A stream cut before its end is charged its prompt only
  (`serve_app/usage.py`).

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
    """What a limiter asks of the ledger for one scope: take and give back permits, tokens and slots.
    Tokens given back may be negative: tokens used beyond those leased, a debt the bucket takes on."""

    scope: str
    requests_per_minute: int | None
    concurrent_requests: int | None
    tokens_per_minute: int | None = None
    take_permits: int = 0
    return_permits: int = 0
    take_tokens: int = 0
    return_tokens: int = 0
    take_slots: int = 0
    return_slots: int = 0


@dataclass(frozen=True)
class Reply:
    permits: int  # granted
    slots: int  # granted
    remaining_requests: int | None  # the bucket's level after the exchange (None: no per-minute limit)
    reset_requests_s: float  # until the bucket is full again
    retry_after_s: float  # until all that was asked may be granted (a guess for slots: they free when requests end)
    tokens: int = 0  # granted
    remaining_tokens: int | None = None  # as for requests: the token bucket's level, at least 0
    reset_tokens_s: float = 0.0


class Ledger:
    """The shared counts of one endpoint."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}  # by scope and kind ("requests", "tokens")
        self._slots_in_use: dict[str, int] = {}

    def exchange(self, asked: Exchange) -> Reply:
        now = self._clock()
        permits, remaining, reset_s, retry_s = self._trade(
            asked.scope, "requests", asked.requests_per_minute, asked.take_permits, asked.return_permits, now
        )
        tokens, remaining_tokens, reset_tokens_s, retry_tokens_s = self._trade(
            asked.scope, "tokens", asked.tokens_per_minute, asked.take_tokens, asked.return_tokens, now
        )
        retry_s = max(retry_s, retry_tokens_s)
        slots = 0
        in_use = max(0, self._slots_in_use.get(asked.scope, 0) - asked.return_slots)
        if asked.concurrent_requests is not None:
            slots = max(0, min(asked.take_slots, asked.concurrent_requests - in_use))
            if slots < asked.take_slots:
                retry_s = max(retry_s, 1.0)
        self._slots_in_use[asked.scope] = in_use + slots
        return Reply(permits, slots, remaining, reset_s, retry_s, tokens, remaining_tokens, reset_tokens_s)

    def _trade(
        self, scope: str, kind: str, limit: int | None, take: int, give_back: int, now: float
    ) -> tuple[int, int | None, float, float]:
        """With one bucket: what is granted, what remains, until it is full, until `take` could be granted."""
        if limit is None:
            return 0, None, 0.0, 0.0
        bucket = self._buckets.get((scope, kind))
        if bucket is None or bucket.limit != limit:  # new, or the keys file changed it
            bucket = self._buckets[(scope, kind)] = _Bucket(limit, now)
        bucket.refill(now)
        bucket.level = min(float(bucket.limit), bucket.level + give_back)
        granted = max(0, min(take, math.floor(bucket.level)))
        bucket.level -= granted
        retry_s = bucket.seconds_until(1.0) if granted < take else 0.0
        return granted, max(0, math.floor(bucket.level)), bucket.seconds_until(bucket.limit), retry_s


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
    tokens: int = 0  # below zero: used beyond what was leased, owed to the ledger
    free_slots: int = 0
    last_used: float = 0.0
    last_reply: Reply | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class Admission:
    """A request let in: the scopes whose slots it holds and those its tokens are charged to, and the
    headers its response carries."""

    scopes: tuple[str, ...]
    headers: dict[str, str]
    token_scopes: tuple[str, ...] = ()


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
        token_scopes: list[str] = []
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
                if limits.tokens_per_minute is not None:
                    token_scopes.append(scope)
                headers = _tighter(headers, _headers(lease))
        return Admission(tuple(scope for scope, _, slot in taken if slot), headers, tuple(token_scopes))

    def release(self, admission: Admission, tokens: int) -> None:
        """The request ended, having cost `tokens` (prompt + completion): its slots free, its tokens charged."""
        now = self._clock()
        for scope in admission.scopes:
            lease = self._leases[scope]
            lease.free_slots += 1
            lease.last_used = now
        for scope in admission.token_scopes:
            lease = self._leases[scope]
            lease.tokens -= tokens
            lease.last_used = now

    async def flush(self) -> None:
        """Gives back what was not used for `HOLD_S`: run every so often (the ingress does, every second)."""
        now = self._clock()
        for scope, lease in list(self._leases.items()):
            if now - lease.last_used < HOLD_S or not (lease.permits or lease.tokens or lease.free_slots):
                continue
            async with lease.lock:
                permits, tokens, slots = lease.permits, lease.tokens, lease.free_slots
                lease.permits = lease.tokens = lease.free_slots = 0
                try:
                    lease.last_reply = await self._ledger.exchange(
                        _exchange(scope, lease.limits, return_permits=permits, return_tokens=tokens, return_slots=slots)
                    )
                except Exception:  # kept for the next flush (requests may have ended meanwhile: added, not set)
                    lease.permits += permits
                    lease.tokens += tokens
                    lease.free_slots += slots
                    raise

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
        # A second round when requests that ended during the first (charging their tokens, which `release`
        # does without the lock) used up the tokens the first found; beyond it, the debt waits for the next.
        for _ in range(2):
            need_permit = limits.requests_per_minute is not None and lease.permits == 0
            need_tokens = limits.tokens_per_minute is not None and lease.tokens <= 0
            need_slot = limits.concurrent_requests is not None and lease.free_slots == 0
            if not (need_permit or need_tokens or need_slot):
                break
            debt = min(lease.tokens, 0)  # settled with the ledger in the same exchange
            reply = await self._ledger.exchange(
                _exchange(
                    scope,
                    limits,
                    take_permits=_batch(limits.requests_per_minute) if need_permit else 0,
                    take_tokens=_batch(limits.tokens_per_minute) if need_tokens else 0,
                    return_tokens=debt,
                    take_slots=1 if need_slot else 0,
                )
            )
            lease.permits += reply.permits
            lease.tokens += reply.tokens - debt
            lease.free_slots += reply.slots
            lease.last_reply = reply
            if need_permit and lease.permits == 0:
                return _refusal(scope, "requests per minute", limits.requests_per_minute or 0, "requests", reply)
            if need_tokens and reply.tokens == 0:
                return _refusal(scope, "tokens per minute", limits.tokens_per_minute or 0, "tokens", reply)
            if need_slot and lease.free_slots == 0:
                return _refusal(scope, "concurrent requests", limits.concurrent_requests or 0, "requests", reply)
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
    return [(scope, limits) for scope, limits in scopes if limits != Limits()]


def _batch(per_minute: int | None) -> int:
    """What a replica leases at once: 5% of the minute's limit."""
    return max(1, (per_minute or 0) // 20)


def _exchange(scope: str, limits: Limits, **amounts: int) -> Exchange:
    return Exchange(scope, limits.requests_per_minute, limits.concurrent_requests, limits.tokens_per_minute, **amounts)


def _refusal(scope: str, what: str, limit: int, error_type: str, reply: Reply) -> OpenAIError:
    holder, name = scope.split(":", 1)
    wait = max(reply.retry_after_s, 0.001)
    message = (
        f"Rate limit reached for {what}: limit {limit} ({holder} {name}). Please try again in {format_duration(wait)}."
    )
    return OpenAIError(429, message, error_type, None, "rate_limit_exceeded", wait)


def _headers(lease: _Lease) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*-requests` and `-tokens` headers, for the per-minute limits a scope has."""
    reply, limits = lease.last_reply, lease.limits
    if reply is None:
        return {}
    headers: dict[str, str] = {}
    for kind, limit, remaining, reset_s in (
        ("requests", limits.requests_per_minute, reply.remaining_requests, reply.reset_requests_s),
        ("tokens", limits.tokens_per_minute, reply.remaining_tokens, reply.reset_tokens_s),
    ):
        if limit is None or remaining is None:
            continue
        in_lease = lease.permits if kind == "requests" else lease.tokens
        headers |= {
            f"x-ratelimit-limit-{kind}": str(limit),
            f"x-ratelimit-remaining-{kind}": str(max(0, remaining + in_lease)),
            f"x-ratelimit-reset-{kind}": format_duration(reset_s),
        }
    return headers


def _tighter(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    """Of two scopes' headers (a key's and its team's), for requests and for tokens each, those of the one
    with less left."""
    merged: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        remaining = f"x-ratelimit-remaining-{kind}"
        candidates = [h for h in (a, b) if remaining in h]
        if candidates:
            tightest = min(candidates, key=lambda h: int(h[remaining]))
            merged |= {name: value for name, value in tightest.items() if name.endswith(f"-{kind}")}
    return merged


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
