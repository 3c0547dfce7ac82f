"""Engine autoscaling on queue depth: the Serve autoscaling policy of the engine deployments.

Serve's default policy counts requests Serve has handed to a replica. An engine replica is busy in a
way only the engine knows: how many requests wait for a batch slot or are being decoded. Each engine
replica reports that number (`ENGINE_QUEUE_METRIC`, from `LLMServer.record_autoscaling_stats`); this
policy sizes the deployment so that each replica holds `target` of them, counting as well the requests
Serve holds at handles because no replica could take them (all busy, or none started yet).

Serve wraps the policy: min/max bounds, upscale/downscale delays and the cold start from zero replicas
are applied around it, so it only answers "how many replicas would this load need".
"""

from __future__ import annotations

from typing import Any

ENGINE_QUEUE_METRIC = "engine_queue_depth"


def engine_queue_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """`ctx` is Serve's `AutoscalingContext`; returns (desired replicas, policy state)."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    reported = (ctx.aggregated_metrics or {}).get(ENGINE_QUEUE_METRIC, {})
    if reported:
        queue = sum(reported.values()) + (ctx.total_queued_requests or 0.0)
    else:  # replicas just started and have not reported yet: Serve's own count is the best estimate
        queue = ctx.total_num_requests
    return queue / ctx.config.get_target_ongoing_requests(), {}
