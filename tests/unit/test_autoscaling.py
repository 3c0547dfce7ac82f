"""The engine autoscaling policy: replicas sized by the engines' own queues, not by Serve's count."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from serve_app.autoscaling import ENGINE_QUEUE_METRIC, engine_queue_policy


@dataclass
class _Config:
    target: float

    def get_target_ongoing_requests(self) -> float:
        return self.target


@dataclass
class _Context:
    """The fields of Serve's `AutoscalingContext` the policy reads (Serve builds it in its controller)."""

    current_num_replicas: int
    engine_queues: dict[str, float]
    total_queued_requests: float = 0.0
    total_num_requests: float = 0.0
    target_num_replicas: int = 1
    config: _Config = field(default_factory=lambda: _Config(4))

    @property
    def aggregated_metrics(self) -> dict[str, dict[str, float]]:
        return {ENGINE_QUEUE_METRIC: self.engine_queues} if self.engine_queues else {}


@pytest.mark.parametrize(
    ("context", "desired"),
    [
        # Serve's own count sees one request per replica; the engines hold 20 (e.g. n=8 fan-out, retries).
        (_Context(2, {"r1": 12, "r2": 8}, total_num_requests=2), 5.0),
        # Requests held at handles because no replica could take them count too.
        (_Context(1, {"r1": 4}, total_queued_requests=8), 3.0),
        (_Context(3, {"r1": 0, "r2": 1, "r3": 0}), 0.25),  # idle: Serve's delay logic then scales down
        (_Context(2, {}, total_num_requests=6), 1.5),  # no report yet: Serve's count stands in
        (_Context(0, {}, target_num_replicas=0), 0),  # at zero: Serve's cold start path decides
    ],
)
def test_desired_replicas_follow_the_engine_queue(context: _Context, desired: float) -> None:
    replicas, state = engine_queue_policy(context)
    assert replicas == pytest.approx(desired) and state == {}
