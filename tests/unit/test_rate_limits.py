"""`serve_app/rate_limits.py`: per-key and per-team limits, leased from one ledger by every ingress replica
(issue #20). Two `Limiter`s over one `Ledger` stand for two ingress replicas."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.keys import Identity, Limits
from serve_app.protocol.errors import OpenAIError
from serve_app.rate_limits import (
    HOLD_S,
    Admission,
    Exchange,
    Ledger,
    Limiter,
    LocalLedger,
    Refusal,
    Reply,
    format_duration,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _replicas(count: int) -> tuple[_Clock, list[Limiter]]:
    clock = _Clock()
    ledger = LocalLedger(Ledger(clock))
    return clock, [Limiter(ledger, clock) for _ in range(count)]


def _admitted(result: Admission | Refusal) -> Admission:
    assert isinstance(result, Admission), result
    return result


def _refused(result: Admission | Refusal) -> OpenAIError:
    assert isinstance(result, Refusal), result
    return result.error


def test_requests_per_minute_are_counted_across_replicas_and_refused_with_openais_429() -> None:
    async def scenario() -> None:
        clock, (a, b) = _replicas(2)
        alice = Identity("alice", limits=Limits(requests_per_minute=40))
        results = [await (a if i % 3 else b).admit(alice) for i in range(40)]
        first = _admitted(results[0])
        assert first.headers["x-ratelimit-limit-requests"] == "40"
        assert int(first.headers["x-ratelimit-remaining-requests"]) == 39
        assert all(isinstance(r, Admission) for r in results)
        for replica in (a, b):  # each holds no permit left, and the ledger has none to lease
            refusal = await replica.admit(alice)
            error = _refused(refusal)
            assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "requests")
            assert "requests per minute: limit 40" in error.message and "key alice" in error.message
            assert error.retry_after_s == pytest.approx(60 / 40)
            assert isinstance(refusal, Refusal) and refusal.headers["x-ratelimit-remaining-requests"] == "0"
        clock.now += 60 / 40  # one more request's worth has flowed back in
        _admitted(await b.admit(alice))
        _refused(await a.admit(alice))

    asyncio.run(scenario())


def test_permits_a_replica_no_longer_uses_go_back_to_the_others() -> None:
    async def scenario() -> None:
        clock, (a, b) = _replicas(2)
        bob = Identity("bob", limits=Limits(requests_per_minute=20))  # batches of one: 5% of 20
        carol = Identity("carol", limits=Limits(requests_per_minute=200))  # batches of ten
        _admitted(await a.admit(carol))  # `a` now holds 9 permits of carol's
        for _ in range(190):
            _admitted(await b.admit(carol))
        _refused(await b.admit(carol))
        clock.now += HOLD_S
        await a.flush()
        clock.now += 0.001  # (nothing flowed back meanwhile: 200 a minute is 0.2 in a millisecond)
        for _ in range(9):
            _admitted(await b.admit(carol))
        _admitted(await a.admit(bob))

    asyncio.run(scenario())


def test_concurrent_requests_hold_a_slot_until_released_across_replicas() -> None:
    async def scenario() -> None:
        clock, (a, b) = _replicas(2)
        dave = Identity("dave", limits=Limits(concurrent_requests=2))
        first, second = _admitted(await a.admit(dave)), _admitted(await b.admit(dave))
        error = _refused(await a.admit(dave))
        assert "concurrent requests: limit 2" in error.message and error.retry_after_s
        a.release(first, 0)
        _refused(await b.admit(dave))  # `a` keeps its free slot a moment, for its own next request
        _admitted(await a.admit(dave))
        b.release(second, 0)
        clock.now += HOLD_S
        await b.flush()
        _admitted(await a.admit(dave))

    asyncio.run(scenario())


def test_a_team_limit_binds_every_key_of_the_team_and_a_refusal_takes_nothing() -> None:
    async def scenario() -> None:
        _, (a,) = _replicas(1)
        team = Limits(requests_per_minute=3)
        erin = Identity("erin", "ml", limits=Limits(concurrent_requests=5), team_limits=team)
        frank = Identity("frank", "ml", limits=Limits(concurrent_requests=1), team_limits=team)
        kept = [_admitted(await a.admit(erin)) for _ in range(2)] + [_admitted(await a.admit(frank))]
        error = _refused(await a.admit(erin))
        assert "team ml" in error.message
        a.release(kept[2], 0)
        _refused(await a.admit(frank))  # the team's minute is used up...
        for admission in kept[:2]:
            a.release(admission, 0)
        assert a._leases["key:frank"].free_slots == 1  # ...and the refusal gave frank's slot back

    asyncio.run(scenario())


def test_a_caller_without_limits_is_not_counted_and_an_unreachable_ledger_admits() -> None:
    class Unreachable:
        async def exchange(self, asked: Exchange) -> Reply:
            raise ConnectionError("the ledger's replica is gone")

    async def scenario() -> None:
        _, (a,) = _replicas(1)
        assert _admitted(await a.admit(Identity("key-1"))) == Admission((), {})
        lost = Limiter(Unreachable(), _Clock())
        assert _admitted(await lost.admit(Identity("gina", limits=Limits(requests_per_minute=1)))).headers == {}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.02, "20ms"), (1.5, "1.5s"), (8.64, "8.64s"), (60, "1m0s"), (360, "6m0s"), (3723, "1h2m3s")]
)
def test_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_tokens_per_minute_are_charged_when_a_request_ends_and_a_debt_refuses_until_it_refills() -> None:
    """A request's cost is known when it ends: it is admitted while its key's token balance is positive,
    charged its usage then, and the debt refuses every replica's requests until the bucket refills."""

    async def scenario() -> None:
        clock, (a, b) = _replicas(2)
        hana = Identity("hana", limits=Limits(tokens_per_minute=1000))  # leases of 50 tokens
        first = _admitted(await a.admit(hana))
        assert first.token_scopes == ("key:hana",)
        assert (first.headers["x-ratelimit-limit-tokens"], first.headers["x-ratelimit-remaining-tokens"]) == (
            "1000",
            "1000",  # the ledger's 950 and the replica's 50
        )
        assert "x-ratelimit-limit-requests" not in first.headers
        running = _admitted(await a.admit(hana))  # admitted on the same positive balance
        a.release(first, 1200)  # more than the whole minute: the overshoot the bound allows
        a.release(running, 30)
        refusal = await a.admit(hana)  # the debt is settled with the ledger, which has nothing to lease
        error = _refused(refusal)
        assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "tokens")
        assert "tokens per minute: limit 1000" in error.message
        assert isinstance(refusal, Refusal) and refusal.headers["x-ratelimit-remaining-tokens"] == "0"
        # The ledger's 950 less the 1,180 owed: 230 below zero; one token is 60/1000 s further.
        assert error.retry_after_s == pytest.approx((230 + 1) * 60 / 1000)
        _refused(await b.admit(hana))  # the other replica sees the same debt
        clock.now += (230 + 50) * 60 / 1000  # the debt, and one lease's worth, has flowed back
        _admitted(await b.admit(hana))

    asyncio.run(scenario())


def test_a_replicas_unused_tokens_and_its_debt_go_back_to_the_ledger() -> None:
    async def scenario() -> None:
        clock, (a, b) = _replicas(2)
        ivan = Identity("ivan", limits=Limits(tokens_per_minute=100))  # leases of 5 tokens
        for _ in range(19):  # 19 leases of 5 taken by `a`, each used up
            a.release(_admitted(await a.admit(ivan)), 5)
        _admitted(await a.admit(ivan))  # the 20th: the ledger is empty now, `a` holds 5
        _refused(await b.admit(ivan))
        clock.now += HOLD_S
        await a.flush()  # `a` was idle: its 5 go back
        clock.now += 0.001
        kept = _admitted(await b.admit(ivan))
        b.release(kept, 40)  # `b` owes 35
        clock.now += HOLD_S
        await b.flush()  # the debt reaches the ledger though `b` asks for nothing
        _refused(await a.admit(ivan))

    asyncio.run(scenario())


def test_of_a_key_and_its_team_each_kind_of_header_comes_from_the_tighter() -> None:
    async def scenario() -> None:
        _, (a,) = _replicas(1)
        jo = Identity(
            "jo",
            team="core",
            limits=Limits(requests_per_minute=10, tokens_per_minute=100_000),
            team_limits=Limits(requests_per_minute=1000, tokens_per_minute=2000),
        )
        headers = _admitted(await a.admit(jo)).headers
        assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-limit-tokens"]) == ("10", "2000")

    asyncio.run(scenario())


def test_tokens_charged_while_a_request_waits_on_the_ledger_do_not_refuse_it() -> None:
    """A request that asks the ledger only for a permit, while another request ends and its tokens take the
    replica's balance below zero, settles that debt with a second exchange rather than being refused."""

    class GatedLedger(LocalLedger):
        def __init__(self, ledger: Ledger) -> None:
            super().__init__(ledger)
            self.gate: asyncio.Event | None = None

        async def exchange(self, asked: Exchange) -> Reply:
            if self.gate is not None:
                await self.gate.wait()
            return await super().exchange(asked)

    async def scenario() -> None:
        clock = _Clock()
        ledger = GatedLedger(Ledger(clock))
        a = Limiter(ledger, clock)
        lee = Identity("lee", limits=Limits(requests_per_minute=20, tokens_per_minute=1000))  # 1 permit, 50 tokens
        first = _admitted(await a.admit(lee))
        ledger.gate = asyncio.Event()
        second = asyncio.create_task(a.admit(lee))  # needs a permit; has 50 tokens
        await asyncio.sleep(0)
        a.release(first, 80)  # the balance is -30 now
        ledger.gate.set()
        admitted = _admitted(await second)
        assert admitted.headers["x-ratelimit-remaining-tokens"] == str(1000 - 80)

    asyncio.run(scenario())
