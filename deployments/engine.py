"""`LLMServer`: one deployment per model, owning its engine (vLLM or replay) and its chat logic."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncGenerator

from ray import serve

from serve_app.chat_completions import ChatCompletions
from serve_app.config import ModelConfig
from serve_app.engines import create_engine
from serve_app.model_source import prepare_model
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.streaming import batched

logger = logging.getLogger("ray.serve")


@serve.deployment(health_check_period_s=10, health_check_timeout_s=30)
class LLMServer:
    async def __init__(self, model: ModelConfig, model_cache_dir: Path, stream_batch_interval_s: float) -> None:
        from transformers import AutoTokenizer

        # The run command prepares models before starting; `serve run`/`serve deploy` prepare them here.
        model_path = await asyncio.to_thread(prepare_model, model.source, model_cache_dir, logger.info)
        tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, model_path)
        self._engine = create_engine(model, model_path, tokenizer)
        logger.info("starting %s engine for model %r from %s", model.engine, model.id, model_path)
        await self._engine.start()
        self._chat = ChatCompletions(model.id, self._engine, tokenizer)
        self._batch_interval_s = stream_batch_interval_s

    async def chat(self, request: ChatCompletionRequest) -> bytes | OpenAIError:
        planned = self._chat.plan(request)
        if isinstance(planned, OpenAIError):
            return planned
        return await self._chat.complete(planned)

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncGenerator[bytes | OpenAIError, None]:
        planned = self._chat.plan(request)
        if isinstance(planned, OpenAIError):
            yield planned
            return
        async for frames in batched(self._chat.stream(planned), self._batch_interval_s):
            yield b"".join(frames)

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def __del__(self) -> None:
        await self._engine.shutdown()
