"""The stall watch's heartbeat (issue #22): vLLM's own stat-logger machinery, as `AsyncLLM` builds it, calls us
after every engine step, so a prefill computed over many steps without a token is progress, not a hang; a
step that ran nothing is not."""

from __future__ import annotations

from pathlib import Path


def test_every_step_that_ran_requests_is_a_heartbeat(model_dir: Path) -> None:
    from vllm.config import ModelConfig, VllmConfig
    from vllm.v1.metrics.loggers import StatLoggerManager
    from vllm.v1.metrics.stats import SchedulerStats

    from serve_app.engines.vllm_heartbeat import heartbeat_logger

    steps: list[None] = []
    config = VllmConfig(model_config=ModelConfig(model=str(model_dir)))
    manager = StatLoggerManager(
        config, custom_stat_loggers=[heartbeat_logger(lambda: steps.append(None))], enable_default_loggers=False
    )
    manager.log_engine_initialized()
    for _ in range(3):  # a prefill's steps: no token yet, one request running
        manager.record(scheduler_stats=SchedulerStats(num_running_reqs=1), iteration_stats=None)
    manager.record(scheduler_stats=SchedulerStats(num_running_reqs=0, num_waiting_reqs=2), iteration_stats=None)
    assert len(steps) == 3
