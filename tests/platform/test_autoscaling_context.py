"""The autoscaling policy reads Serve's `AutoscalingContext`: guard against a Ray upgrade renaming its fields."""

from __future__ import annotations

from typing import Any


def test_the_policy_uses_serves_context_fields() -> None:
    """Guard against a Ray upgrade renaming what the policy reads."""
    from ray.serve.config import AutoscalingContext

    fields: Any = AutoscalingContext.__init__.__code__.co_varnames
    for name in (
        "current_num_replicas",
        "target_num_replicas",
        "total_num_requests",
        "total_queued_requests",
        "aggregated_metrics",
        "config",
    ):
        assert name in fields
