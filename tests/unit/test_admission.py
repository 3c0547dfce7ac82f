"""Admission to an engine (issue #17): requests are judged on arrival, then wait their turn; a request counts
for each generation it fans out to; a full queue is a 503 with `Retry-After`, decided in the step the request's
plan comes back; siblings of a failed generation are cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.chat_completions import ChatCompletions, PlannedChat
from serve_app.completions import PlannedCompletion, TextCompletions
from serve_app.engines.admission import Admission, AdmittedEngine, Place
from serve_app.engines.base import EngineLost, GenerationDelta, GenerationRequest, SamplingOptions
from serve_app.engines.replay import ReplayEngine
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.completions import CompletionRequest
from serve_app.protocol.errors import OpenAIError
from tests.sse_client import parse_sse, read_frames


async def _settle() -> None:
    """Let every ready task run (a few loop turns)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def _acquire(admission: Admission, weight: int = 1, caller: str = "", priority: int = 0) -> Place:
    place = admission.enter(weight, caller, priority)
    await admission.wait(place)
    return place


def test_generations_beyond_the_limit_wait_their_turn() -> None:
    async def scenario() -> None:
        admission = Admission(max_running=2)
        first = await _acquire(admission)
        await _acquire(admission)
        third = asyncio.create_task(_acquire(admission))
        await _settle()
        assert not third.done() and admission.waiting == 1
        admission.leave(first)
        admission.leave(first)  # once only
        await _settle()
        assert third.done() and admission.running == 2 and admission.waiting == 0

    asyncio.run(scenario())


def test_a_request_counts_once_per_generation_and_is_not_overtaken() -> None:
    """n=3 on an engine that runs 2 at once: it runs alone (never never), and a lighter request that
    would fit beside the running one still waits behind it: first come, first served."""

    async def scenario() -> None:
        admission = Admission(max_running=2)
        first = await _acquire(admission)
        heavy = asyncio.create_task(_acquire(admission, 3))
        light = asyncio.create_task(_acquire(admission))
        await _settle()
        assert not heavy.done() and not light.done()
        assert admission.waiting_weight == 4
        admission.leave(first)
        await _settle()
        assert heavy.done() and not light.done() and admission.running == 3
        admission.leave(heavy.result())
        await _settle()
        assert light.done() and admission.running == 1

    asyncio.run(scenario())


def _admitted_order(admission: Admission, arrivals: list[tuple[str, int]]) -> list[str]:
    """Fills the admission with caller "a", lets `arrivals` (caller, priority) wait in that order, then ends
    the running requests one at a time, oldest first: the order in which the waiting ones got in."""

    async def scenario() -> list[str]:
        running = [await _acquire(admission, 1, "a") for _ in range(admission.max_running)]
        order: list[str] = []

        async def wait(caller: str, priority: int) -> None:
            running.append(await _acquire(admission, 1, caller, priority))
            order.append(caller)

        tasks = []
        for caller, priority in arrivals:
            tasks.append(asyncio.create_task(wait(caller, priority)))
            await _settle()
        for _ in arrivals:
            admission.leave(running.pop(0))
            await _settle()
        await asyncio.gather(*tasks)
        return order

    return asyncio.run(scenario())


def test_a_waiter_cancelled_just_before_a_place_frees_takes_no_place() -> None:
    """Its ticket is cancelled at once, its task resumes later: a release in between must not admit it."""

    async def scenario() -> None:
        admission = Admission(max_running=1)
        running = await _acquire(admission, 1, "a")
        waiting = asyncio.create_task(_acquire(admission, 1, "b"))
        await _settle()
        waiting.cancel()  # cancels its ticket now; its task runs its handler later
        admission.leave(running)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (admission.running, admission.waiting) == (0, 0)
        await _acquire(admission, 1, "b")  # the place is free, and b has nothing counted against it
        assert admission.running == 1

    asyncio.run(scenario())


def test_a_busy_engine_lets_waiting_keys_take_turns_not_the_burst_first() -> None:
    """Issue #20, fair share: key a holds every place and has four more waiting; b's one request, which came
    last, goes in with the first free place, because b has nothing running; then a's, in their order."""
    arrivals = [("a", 0), ("a", 0), ("a", 0), ("a", 0), ("b", 0)]
    assert _admitted_order(Admission(max_running=2), arrivals) == ["b", "a", "a", "a", "a"]
    # First come, first served when fairness is off.
    assert _admitted_order(Admission(max_running=2, fair=False), arrivals) == ["a", "a", "a", "a", "b"]


def test_keys_take_turns_by_what_they_run_and_a_lower_priority_goes_first() -> None:
    arrivals = [("b", 0), ("b", 0), ("c", 0), ("d", 1), ("c", 0)]
    # b (nothing running) first; then c (nothing running, while b now runs one); then b and c alternate by
    # what each runs; d's priority 1 waits for every priority-0 request.
    assert _admitted_order(Admission(max_running=2), arrivals) == ["b", "c", "b", "c", "d"]
    assert _admitted_order(Admission(max_running=2), [("b", 1), ("c", 0)]) == ["c", "b"]


def test_a_waiter_that_leaves_gives_its_turn_away() -> None:
    async def scenario() -> None:
        admission = Admission(max_running=1)
        running = await _acquire(admission)
        first = asyncio.create_task(_acquire(admission))
        second = asyncio.create_task(_acquire(admission))
        await _settle()
        first.cancel()  # its client left while it waited
        await _settle()
        assert admission.waiting == 1
        admission.leave(running)
        await _settle()
        assert second.done() and admission.running == 1 and admission.waiting == 0

    asyncio.run(scenario())


@pytest.fixture
def slow_script(tmp_path: Path) -> Path:
    path = tmp_path / "script.yaml"
    replies = [
        {"when": {"last_message": "fail"}, "text": "one two three four five", "fail_after_tokens": 2},
        {"text": "a long answer " * 20},
    ]
    path.write_text(yaml.safe_dump({"token_delay_s": 0.01, "replies": replies}))
    return path


def _chat(content: str, **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": content}], **fields}
    )


def _generation(request_id: str, n: int = 1) -> GenerationRequest:
    return GenerationRequest(request_id, [1, 2, 3], SamplingOptions(max_tokens=8, n=n))


def test_each_requests_wait_for_room_is_told_for_the_queue_time_metric(tokenizer: Any, slow_script: Path) -> None:
    async def scenario() -> list[float]:
        waits: list[float] = []
        engine = AdmittedEngine(ReplayEngine(tokenizer, slow_script, 512, None), "m", 1, None, waits.append)
        chat = ChatCompletions("m", engine, tokenizer)
        planned = [chat.plan(_chat("hello")) for _ in range(2)]
        assert all(isinstance(p, PlannedChat) for p in planned)
        await asyncio.gather(*(chat.complete(p) for p in planned if isinstance(p, PlannedChat)))
        return waits

    first, second = asyncio.run(scenario())
    # The first went in at once; the second waited for the whole first answer: ~60 tokens, 10 ms apart at least.
    assert first < second and second >= 0.3


def test_a_full_queue_is_a_503_with_retry_after_decided_in_the_step_the_plans_come_back(
    tokenizer: Any, slow_script: Path
) -> None:
    """Three requests planned at once (a burst the replica's planning thread got through while its event loop
    was busy with other streams): held in that same step, without awaiting, the first runs, the second waits,
    the third is refused, before any of their streams began. The bound is exact, whenever the streams start."""

    async def scenario() -> None:
        engine = AdmittedEngine(ReplayEngine(tokenizer, slow_script, 512, None), "m", max_running=1, max_waiting=1)
        chat = ChatCompletions("m", engine, tokenizer)
        running, waiting, refused = (chat.plan(_chat("hello")) for _ in range(3))
        assert isinstance(running, PlannedChat) and isinstance(waiting, PlannedChat)
        assert isinstance(refused, PlannedChat)

        async def served(planned: PlannedChat) -> bytes | OpenAIError:
            with engine.hold(planned.generations) as full:
                return full if full is not None else await chat.complete(planned)

        first = asyncio.create_task(served(running))
        second = asyncio.create_task(served(waiting))
        third = asyncio.create_task(served(refused))
        await _settle()
        assert third.done() and isinstance(error := third.result(), OpenAIError)
        assert (error.status_code, error.code, error.retry_after_s) == (503, "service_unavailable", 1.0)
        assert engine.num_unfinished_requests() == 2  # one in the engine, one waiting: the queue depth

        answers = await asyncio.gather(first, second)
        assert all(isinstance(answer, bytes) for answer in answers)
        assert engine.num_unfinished_requests() == 0
        with engine.hold(refused.generations) as full:
            assert full is None  # room again

    asyncio.run(scenario())


def test_a_place_held_for_a_stream_that_never_began_is_given_back(tokenizer: Any, slow_script: Path) -> None:
    """The client left between the plan and the stream's first pull: the place goes to the next in line."""

    async def scenario() -> None:
        engine = AdmittedEngine(ReplayEngine(tokenizer, slow_script, 512, None), "m", max_running=1, max_waiting=0)
        with engine.hold([_generation("gone")]) as full:
            assert full is None
            with engine.hold([_generation("refused")]) as full:
                assert full is not None and full.status_code == 503
        with engine.hold([_generation("next")]) as full:
            assert full is None and engine.num_unfinished_requests() == 0

    asyncio.run(scenario())


def test_a_fan_out_is_held_whole_or_refused_whole(tokenizer: Any, slow_script: Path) -> None:
    """Two prompts of one completions request, one place free and one allowed to wait: both held; one more
    prompt than that and the whole request is refused, holding nothing."""

    async def scenario() -> None:
        engine = AdmittedEngine(ReplayEngine(tokenizer, slow_script, 512, None), "m", max_running=1, max_waiting=1)
        with engine.hold([_generation("a-0"), _generation("a-1")]) as full:
            assert full is None and engine.num_unfinished_requests() == 1  # one runs, one waits
        three = [_generation(f"b-{i}") for i in range(3)]
        with engine.hold(three) as full:
            assert full is not None and full.status_code == 503
            assert engine.num_unfinished_requests() == 0

    asyncio.run(scenario())


def test_a_failed_generation_cancels_its_siblings(tokenizer: Any, slow_script: Path) -> None:
    """Two prompts of one completions request: the first fails after two tokens; the second, a long answer,
    is cancelled then rather than generated for nobody."""

    async def scenario() -> None:
        replay = ReplayEngine(tokenizer, slow_script, 512, None)
        completions = TextCompletions("m", AdmittedEngine(replay, "m", max_running=8, max_waiting=None), tokenizer)
        request = CompletionRequest.model_validate({"model": "m", "prompt": ["fail", "go on"], "max_tokens": 100})
        planned = completions.plan(request)
        assert isinstance(planned, PlannedCompletion)
        answer = await completions.complete(planned)
        assert isinstance(answer, OpenAIError) and answer.status_code == 500
        assert replay.num_unfinished_requests() == 0  # the sibling is not running on

    asyncio.run(scenario())


def test_an_engine_lost_under_a_fan_out_is_a_503_not_our_bug(tokenizer: Any, slow_script: Path) -> None:
    """Issue #19: the engine's process dies under a two-prompt request: the first failure (`EngineLost`, not the
    group of failures it caused) decides the answer, a 503 to retry."""

    class Dying(ReplayEngine):
        async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
            async for delta in super().generate(request):
                yield delta
                raise EngineLost("the EngineCore died")

    async def scenario() -> None:
        completions = TextCompletions("m", Dying(tokenizer, slow_script, 512, None), tokenizer)
        request = CompletionRequest.model_validate({"model": "m", "prompt": ["go on", "go on"], "max_tokens": 50})
        planned = completions.plan(request)
        assert isinstance(planned, PlannedCompletion)
        answer = await completions.complete(planned)
        assert isinstance(answer, OpenAIError) and (answer.status_code, answer.code) == (503, "service_unavailable")
        frames = await read_frames(completions.stream(planned))
        assert parse_sse(frames)[-1]["error"]["code"] == "service_unavailable"

    asyncio.run(scenario())


def test_admission_bookkeeping_survives_a_failed_generation(tokenizer: Any, slow_script: Path) -> None:
    async def scenario() -> None:
        engine = AdmittedEngine(ReplayEngine(tokenizer, slow_script, 512, None), "m", max_running=1, max_waiting=0)
        request = GenerationRequest(
            "r", tokenizer.encode("x"), SamplingOptions(max_tokens=8), [{"role": "user", "content": "fail"}]
        )
        with pytest.raises(RuntimeError):
            async for _ in engine.generate(request):
                pass
        with engine.hold([_generation("next")]) as full:
            assert full is None  # nothing holds the place of the failed one

    asyncio.run(scenario())
