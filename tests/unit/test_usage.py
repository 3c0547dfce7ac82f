"""`serve_app/usage.py`: what a request cost, read from a whole answer's `usage` field or reported after a
stream's last frame, the same figures either way (issue #20)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from serve_app.engines.replay import ReplayEngine
from serve_app.model_service import ModelService, Plan
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.completions import CompletionRequest
from serve_app.usage import UsageReport
from tests.conftest import REPLAY_SCRIPT


def test_a_whole_answers_usage_is_its_last_usage_object_whatever_its_text_says() -> None:
    body = json.dumps(
        {
            "choices": [{"message": {"content": 'say "usage": {"prompt_tokens": 1}'}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}},
            "system_fingerprint": "fp",
        },
        separators=(",", ":"),
    ).encode()
    assert UsageReport.from_body(body) == UsageReport(7, 5, 4)
    embeddings = b'{"data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":3,"total_tokens":3}}'
    assert UsageReport.from_body(embeddings) == UsageReport(3, 0)
    assert UsageReport.from_body(b'{"choices":[]}') is None
    assert UsageReport.from_body(b'{"usage":nul') is None


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}], "n": 2},
        {"prompt": ["hi", "tell me a story about a dragon, a knight and a castle " * 3], "max_tokens": 20},
    ],
    ids=["chat", "completions"],
)
def test_a_streams_usage_report_matches_the_whole_answers_usage(tokenizer: Any, body: dict[str, Any]) -> None:
    service = ModelService("m", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    request_type = ChatCompletionRequest if "messages" in body else CompletionRequest

    def plan(**fields: Any) -> Plan:
        planned = service.plan(request_type.model_validate({"model": "m"} | body | fields))
        assert isinstance(planned, Plan)
        return planned

    async def both() -> tuple[bytes, list[bytes | UsageReport]]:
        await plan().complete()  # from now on the prompt's prefix is cached, for both answers alike
        whole = await plan().complete()
        assert isinstance(whole, bytes)
        return whole, [item async for item in plan(stream=True).stream()]

    whole, items = asyncio.run(both())
    usage = json.loads(whole)["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert items[-1] == UsageReport(usage["prompt_tokens"], usage["completion_tokens"], cached) and cached > 0
    assert UsageReport.from_body(whole) == items[-1]
