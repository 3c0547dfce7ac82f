"""The official OpenAI Python SDK against the app: every call style agents and scripts use."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from serve_app.config import ServerOptions
from serve_app.engines.replay import ReplayEngine
from serve_app.http_api import create_http_app
from tests.conftest import REPLAY_SCRIPT
from tests.in_process import InProcessBackend
from tests.integration.conftest import REPLAY_MODEL, VLLM_MODEL, RunningApp

pytestmark = pytest.mark.integration

COUNT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "count"}]
COUNTED = "one two three four five six seven eight nine ten"


def test_sync_create_and_stream(client: OpenAI) -> None:
    reply = client.chat.completions.create(model=REPLAY_MODEL, messages=COUNT)
    assert reply.usage is not None
    assert reply.choices[0].message.content == COUNTED and reply.usage.completion_tokens == 10
    stream = client.chat.completions.create(
        model=REPLAY_MODEL, messages=COUNT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == COUNTED
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10


def test_async_create_and_stream(running_app: RunningApp) -> None:
    async def run() -> tuple[str, str]:
        async with AsyncOpenAI(base_url=running_app.base_url, api_key="unused", max_retries=0) as aclient:
            reply = await aclient.chat.completions.create(model=REPLAY_MODEL, messages=COUNT)
            stream = await aclient.chat.completions.create(model=REPLAY_MODEL, messages=COUNT, stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return reply.choices[0].message.content or "", streamed

    assert asyncio.run(run()) == (COUNTED, COUNTED)


def test_stream_helper_accumulates_the_final_message(client: OpenAI) -> None:
    with client.chat.completions.stream(model=REPLAY_MODEL, messages=COUNT) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == COUNTED
    assert final.choices[0].message.content == COUNTED and final.choices[0].finish_reason == "stop"


def test_raw_response_exposes_headers(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=REPLAY_MODEL, messages=COUNT)
    assert raw.headers["x-request-id"] and raw.headers["content-type"] == "application/json"
    assert raw.parse().choices[0].message.content == COUNTED


def test_completions_and_models(client: OpenAI) -> None:
    usage = client.completions.create(model=VLLM_MODEL, prompt="Hello", max_tokens=3).usage
    assert usage is not None and usage.completion_tokens == 3
    assert client.models.retrieve(REPLAY_MODEL).id == REPLAY_MODEL


def test_error_classes_carry_the_servers_message(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=COUNT)
    assert not_found.value.code == "model_not_found" and "no-such-model" in not_found.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=REPLAY_MODEL, messages=COUNT, logprobs=True, top_logprobs=25)
    assert bad.value.param == "top_logprobs"


def test_authentication_error_with_keys(tokenizer: Any) -> None:
    """401 `AuthenticationError` (R1.2), through the same HTTP surface configured with keys."""
    backend = InProcessBackend(REPLAY_MODEL, ReplayEngine(tokenizer, REPLAY_SCRIPT, 4096, 0.0), tokenizer)
    app = create_http_app(backend, ServerOptions(api_keys=["sk-right"]))
    http_client = TestClient(app, base_url="http://testserver")
    wrong = OpenAI(base_url="http://testserver/v1", api_key="sk-wrong", http_client=http_client, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.code == "invalid_api_key"
    right = OpenAI(base_url="http://testserver/v1", api_key="sk-right", http_client=http_client, max_retries=0)
    assert right.chat.completions.create(model=REPLAY_MODEL, messages=COUNT).choices[0].message.content == COUNTED
