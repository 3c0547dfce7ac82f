"""Engines behind the `Engine` protocol: real vLLM, and the deterministic replay engine for tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_app.config import ModelConfig
from serve_app.engines.admission import AdmittedEngine
from serve_app.engines.base import Engine


def create_engine(
    model: ModelConfig, model_path: Path, tokenizer: Any, on_wait: Callable[[float], None] | None = None
) -> Engine:
    """The model's engine; a generating one behind its admission (`serve_app.engines.admission`), which tells
    `on_wait` how long each request waited there."""
    engine: Engine
    if model.engine == "replay":
        from serve_app.engines.replay import ReplayEngine

        assert model.replay is not None  # the config validator guarantees it
        engine = ReplayEngine(tokenizer, model.replay.script, model.replay.max_model_len, model.replay.token_delay_s)
    else:
        from serve_app.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(
            model_path,
            model.engine_args,
            served_model_name=model.id,
            reasoning_parser=model.reasoning_parser,
            task=model.task,
            compact_json=model.compact_json,
            repetition_guard=model.repetition_guard,
            closing_pressure=model.closing_pressure,
            num_cpus=model.deployment.num_cpus,
        )
    if model.task == "embed":
        return engine
    deployment = model.deployment
    return AdmittedEngine(
        engine, model.id, deployment.max_ongoing_requests, model.max_queued_requests, on_wait, model.fair_share
    )
