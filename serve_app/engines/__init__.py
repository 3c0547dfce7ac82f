"""Engines behind the `Engine` protocol: real vLLM, and the deterministic replay engine for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serve_app.config import ModelConfig
from serve_app.engines.base import Engine


def create_engine(model: ModelConfig, model_path: Path, tokenizer: Any) -> Engine:
    if model.engine == "replay":
        from serve_app.engines.replay import ReplayEngine

        assert model.replay is not None  # the config validator guarantees it
        return ReplayEngine(tokenizer, model.replay.script, model.replay.max_model_len, model.replay.token_delay_s)
    from serve_app.engines.vllm_engine import VLLMEngine

    return VLLMEngine(
        model_path,
        model.engine_args,
        served_model_name=model.id,
        reasoning_parser=model.reasoning_parser,
        task=model.task,
    )
