"""The real application end to end: Ray Serve ingress + engine deployments, OpenAI Python SDK as client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from serve_app.ray_settings import PROXY_ENV_VARS, REPLICA_ENV_VARS
from tests.integration.conftest import (
    ALL_MODELS,
    EMBEDDING_ALIAS,
    EMBEDDING_MODEL,
    NARROW_MODEL,
    REPLAY_MODEL,
    VLLM_ALIAS,
    VLLM_MODEL,
    RunningApp,
)
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse

pytestmark = pytest.mark.integration

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


def _raw_stream(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = http.post("/chat/completions", json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = parse_sse(response.content)
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    return chunks


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_ingress_and_engines_are_separate_deployments(running_app: RunningApp) -> None:
    from ray import serve

    deployments = serve.status().applications[running_app.app_name].deployments
    engines = {f"LLMServer:{m}" for m in [*ALL_MODELS, EMBEDDING_MODEL]}
    assert set(deployments) == {"OpenAIIngress", "ToolParsing", "StructuredOutput", "LimitsLedger"} | engines
    assert all(d.status.value == "HEALTHY" for d in deployments.values())


def test_proxy_and_replicas_run_with_the_stack_settings(running_app: RunningApp) -> None:
    """The settings of `serve_app/ray_settings.py` (issue #7) reach the processes that read them: the proxy
    managers through the controller's runtime environment, each replica through its deployment's; the app's
    port is HAProxy's, not Serve's Python proxy's; the proxies, the replicas and the vLLM processes they
    spawn run at the node's normal priority."""
    from urllib.parse import urlsplit

    import psutil

    proxies, replicas = [], []
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith(("ray::ProxyActor", "ray::HAProxyManager")):
            proxies.append(process)
        elif title.startswith(f"ray::ServeReplica:{running_app.app_name}:"):
            replicas.append(process)
    assert (
        len(proxies) == 2 and len(replicas) >= 5
    )  # fallback proxy, HAProxy's manager; ingress, post-processing, engines
    assert all(PROXY_ENV_VARS.items() <= p.environ().items() for p in proxies)
    assert all(REPLICA_ENV_VARS.items() <= p.environ().items() for p in replicas)
    port = urlsplit(running_app.base_url).port
    listening = {
        c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert {psutil.Process(pid).name() for pid in listening} == {"haproxy"}
    engines = [
        c
        for r in replicas
        for c in r.children(recursive=True)
        if c.cmdline()[:1] in (["VLLM::EngineCore"], ["VLLM::Worker"])
    ]
    assert engines
    assert {p.nice() for p in proxies + replicas + engines} == {0}


def test_models_are_listed(client: OpenAI, http: httpx.Client) -> None:
    """R1.5."""
    body = http.get("/models").json()
    context = {card["id"]: card.pop("max_model_len") for card in body["data"]}
    windows = {EMBEDDING_MODEL: 256, EMBEDDING_ALIAS: 256, NARROW_MODEL: 512}
    assert context == {name: 8192 for name in [*ALL_MODELS, VLLM_ALIAS]} | windows
    assert_valid(body, "ListModelsResponse")
    assert sorted(m.id for m in client.models.list()) == sorted(context)


def test_an_alias_is_answered_as_its_model(client: OpenAI) -> None:
    """Several names, one engine deployment: the response names the model the alias stands for."""
    assert client.models.retrieve(VLLM_ALIAS).id == VLLM_ALIAS
    reply = client.chat.completions.create(model=VLLM_ALIAS, messages=QUESTION, max_tokens=3)
    assert reply.usage is not None
    assert reply.model == VLLM_MODEL and reply.usage.completion_tokens == 3
    chunks = list(client.chat.completions.create(model=VLLM_ALIAS, messages=QUESTION, max_tokens=3, stream=True))
    assert {c.model for c in chunks} == {VLLM_MODEL}


def test_real_model_answers_through_its_chat_template(client: OpenAI, http: httpx.Client, tokenizer: Any) -> None:
    """SmolLM2 itself answers (greedy), with the engine's token counts in usage (R3.1, R3.5)."""
    raw = http.post(
        "/chat/completions", json={"model": VLLM_MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 40}
    )
    assert raw.status_code == 200, raw.text
    assert_valid(raw.json(), "CreateChatCompletionResponse")

    response = client.chat.completions.create(model=VLLM_MODEL, messages=QUESTION, temperature=0, max_tokens=40)
    choice = response.choices[0]
    assert choice.message.content is not None and "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert response.usage is not None
    assert response.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    assert 0 < response.usage.completion_tokens <= 40


def test_real_model_streams_the_same_text(client: OpenAI, http: httpx.Client) -> None:
    """R4.2-R4.4 with vLLM: greedy streaming gives the non-streamed text, one finish_reason, then usage."""
    body: dict[str, Any] = {"model": VLLM_MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 40}
    whole = client.chat.completions.create(**body).choices[0].message.content

    chunks = _raw_stream(http, {**body, "stream_options": {"include_usage": True}})
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert _text(chunks) == whole
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0

    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**body, stream=True)
        if chunk.choices
    )
    assert streamed == whole


def test_token_cap_gives_length(client: OpenAI) -> None:
    """R3.4: the cap is honoured by the engine and reported."""
    response = client.chat.completions.create(
        model=VLLM_MODEL, messages=[{"role": "user", "content": "Write a long story about a dragon."}], max_tokens=5
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 5


def test_replay_engine_is_deterministic_through_the_app(client: OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "please count"}]
    first = client.chat.completions.create(model=REPLAY_MODEL, messages=messages)
    second = client.chat.completions.create(model=REPLAY_MODEL, messages=messages)
    assert (
        first.choices[0].message.content
        == second.choices[0].message.content
        == ("one two three four five six seven eight nine ten")
    )
    assert first.usage is not None
    assert first.usage.completion_tokens == 10


def test_context_overflow_is_a_400_through_the_app(client: OpenAI) -> None:
    """R2.5 through Ray: the error value crosses the deployment boundary and keeps its status."""
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=REPLAY_MODEL, messages=[{"role": "user", "content": "word " * 9000}], stream=True
        )
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length" in json.dumps(info.value.body)


def test_real_model_reports_its_prefix_cache_hits(client: OpenAI) -> None:
    """vLLM's prefix cache, as `usage.prompt_tokens_details.cached_tokens`: a conversation's next turn finds
    the earlier turn's prompt cached (issue #22), streamed and whole."""
    system: ChatCompletionMessageParam = {"role": "system", "content": "You answer questions about rivers. " * 50}
    history = [system, *QUESTION]
    first = client.chat.completions.create(model=VLLM_MODEL, messages=history, max_tokens=2)
    assert first.usage is not None and first.usage.prompt_tokens > 2 * 128  # vLLM's CPU blocks: 128 tokens
    turn: list[ChatCompletionMessageParam] = [
        *history,
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = client.chat.completions.create(model=VLLM_MODEL, messages=turn, max_tokens=2)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert (second.usage.prompt_tokens_details.cached_tokens or 0) >= 128
    chunks = list(
        client.chat.completions.create(
            model=VLLM_MODEL,
            messages=turn,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens_details.cached_tokens or 0) >= 128
