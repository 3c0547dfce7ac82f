"""The hung-engine watch (issue #19, outcome 3): work and no output for the deadline is a stall; idle time,
however long, is not."""

from __future__ import annotations

from serve_app.engines.stall_watch import StallWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_work_without_output_past_the_deadline_is_a_stall() -> None:
    clock = Clock()
    watch = StallWatch(10, clock)
    clock.now = 9
    assert not watch.stalled(busy=True)
    clock.now = 10.5
    assert watch.stalled(busy=True)


def test_output_restarts_the_count() -> None:
    clock = Clock()
    watch = StallWatch(10, clock)
    clock.now = 8
    watch.moved()
    clock.now = 17
    assert not watch.stalled(busy=True)
    clock.now = 18.5
    assert watch.stalled(busy=True)


def test_idle_time_is_no_stall_and_the_count_starts_with_the_work() -> None:
    clock = Clock()
    watch = StallWatch(10, clock)
    clock.now = 3600
    assert not watch.stalled(busy=False)  # an hour without requests
    clock.now = 3605
    assert not watch.stalled(busy=True)  # a request arrived: 5 s into it
