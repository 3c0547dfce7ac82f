"""The stall watch's view of vLLM's steps: a stat logger, which vLLM's output loop calls once per engine step.

A long prompt is computed in chunks, one per step (chunked prefill), and a step that only advanced a prefill
produces no token: the watch would see no progress for all of a 5,000-token prompt on a CPU (70 s in float32,
200 s in emulated bfloat16) and take it for a hung engine. The EngineCore reports its scheduler's statistics
after every step, tokens or not (a stat logger makes vLLM keep them on), so each report of a step that ran
requests is a heartbeat; a hung EngineCore sends none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase


def heartbeat_logger(on_step: Callable[[], None]) -> Callable[[VllmConfig, int], StatLoggerBase]:
    """A factory for `AsyncLLM`'s `stat_loggers`, calling `on_step` after every engine step."""

    class StepHeartbeat(StatLoggerBase):
        def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
            # Only a step that ran something: an engine that loops without scheduling anything (waiting on
            # a grammar that never compiles, say) is making no progress.
            if scheduler_stats is not None and scheduler_stats.num_running_reqs > 0:
                on_step()

        def log_engine_initialized(self) -> None:
            pass

    return StepHeartbeat
