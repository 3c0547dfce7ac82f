"""Conformance with the wire rules of docs/compatibility.md, rule by rule (R1-R5), against the running app.

Real vLLM on the small model where semantics matter (sampling, logprobs, n, disconnects); the replay
engine where a rule needs a deterministic or slow stream. Every body and chunk is validated against
OpenAI's spec with no extra fields allowed (R3.6).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from serve_app.autoscaling import ENGINE_QUEUE_METRIC
from tests.integration.conftest import (
    ALL_MODELS,
    EMBEDDING_ALIAS,
    EMBEDDING_MODEL,
    REPLAY_MODEL,
    VLLM_MODEL,
    RunningApp,
)
from tests.openai_spec import assert_valid, reference_dir
from tests.sse_client import parse_sse

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def root(running_app: RunningApp) -> httpx.Client:
    return httpx.Client(base_url=running_app.base_url.removesuffix("/v1"), timeout=120)


def _chat(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert_valid(response.json(), "CreateChatCompletionResponse")
    return cast(dict[str, Any], response.json())


def _chat_stream(http: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    response = http.post("/chat/completions", json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = parse_sse(response.content)
    for chunk in chunks:
        assert_valid(chunk, "ErrorResponse" if "error" in chunk else "CreateChatCompletionStreamResponse")
    return chunks


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert_valid(response.json(), "ErrorResponse")
    return cast(dict[str, Any], response.json()["error"])


def _content(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c.get("choices") and c["choices"][0]["index"] == index
    )


def _completion_chunk_valid(chunk: dict[str, Any]) -> None:
    """OpenAI's spec gives streamed completions the response's shape, but OpenAI itself (and every client)
    sends `finish_reason: null` until a choice ends; the spec's non-null enum is checked on the rest."""
    check = json.loads(json.dumps(chunk))
    for choice in check["choices"]:
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "stop"
    assert_valid(check, "CreateCompletionResponse")


# --- R1: endpoints and transport ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/v1//models", "//v1/models"])
def test_r1_1_routes_answer_with_and_without_v1_and_doubled_slashes(root: httpx.Client, path: str) -> None:
    response = root.get(path)
    assert response.status_code == 200, response.text
    assert {m["id"] for m in response.json()["data"]} >= {*ALL_MODELS, EMBEDDING_MODEL}


def test_r1_1_chat_completions_and_embeddings_without_v1(root: httpx.Client) -> None:
    assert root.post("/chat/completions", json={"model": REPLAY_MODEL, "messages": HI}).status_code == 200
    assert root.post("//v1//completions", json={"model": REPLAY_MODEL, "prompt": "hi"}).status_code == 200
    assert root.post("/embeddings", json={"model": EMBEDDING_MODEL, "input": "hi"}).status_code == 200


def test_r1_1_retrieve_one_model(http: httpx.Client) -> None:
    card = http.get(f"/models/{VLLM_MODEL}").json()
    assert card.pop("max_model_len") == 8192
    assert_valid(card, "Model")
    assert _error(http.get("/models/no-such-model"), 404)["code"] == "model_not_found"


def test_r1_2_unknown_client_headers_are_accepted(http: httpx.Client) -> None:
    headers = {
        "HTTP-Referer": "https://cline.bot",
        "X-Title": "Cline",
        "X-Stainless-Lang": "python",
        "X-Stainless-Retry-Count": "0",
        "OpenAI-Organization": "org-x",
        "OpenAI-Project": "proj-x",
        "Authorization": "Bearer anything-goes-without-keys",
    }
    response = http.post("/chat/completions", json={"model": REPLAY_MODEL, "messages": HI}, headers=headers)
    assert response.status_code == 200


def test_r1_3_cors_preflight(http: httpx.Client) -> None:
    response = http.options(
        "/chat/completions",
        headers={
            "Origin": "vscode-webview://abc",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "vscode-webview://abc")
    assert "POST" in response.headers["access-control-allow-methods"]


def test_r1_4_every_response_carries_a_request_id_and_echoes_the_clients(http: httpx.Client) -> None:
    for response in (
        http.get("/models"),
        http.post("/chat/completions", json={"model": REPLAY_MODEL, "messages": HI}),
        http.post("/chat/completions", json={"model": REPLAY_MODEL, "messages": HI, "stream": True}),
        http.get("/nothing"),
        http.post("/chat/completions", json={"model": "nope", "messages": HI}),
    ):
        assert response.headers.get("x-request-id"), response.request.url
    echoed = http.get("/models", headers={"x-request-id": "client-chosen-id-123"})
    assert echoed.headers["x-request-id"] == "client-chosen-id-123"


def test_r1_5_models_list_and_every_id_is_accepted(http: httpx.Client) -> None:
    body = http.get("/models").json()
    for card in body["data"]:
        assert card.pop("max_model_len") > 0
    assert_valid(body, "ListModelsResponse")
    for card in body["data"]:
        if card["id"] in (EMBEDDING_MODEL, EMBEDDING_ALIAS):  # served on /v1/embeddings
            assert http.post("/embeddings", json={"model": card["id"], "input": "hi"}).status_code == 200
        else:
            _chat(http, model=card["id"], messages=HI, max_tokens=2)
    assert (
        _error(http.post("/chat/completions", json={"model": "gpt-4o", "messages": HI}), 404)["code"]
        == "model_not_found"
    )


# --- R2: requests ---------------------------------------------------------------------------------


def test_r2_1_every_openai_request_field_is_accepted(http: httpx.Client) -> None:
    body = {
        "model": REPLAY_MODEL,
        "messages": HI,
        "stream": False,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 20,
        "max_completion_tokens": 20,
        "stop": ["zzz"],
        "n": 1,
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
        "logit_bias": {"42": 1},
        "logprobs": False,
        "user": "u",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "response_format": {"type": "text"},
        "reasoning_effort": "low",
        "store": False,
        "metadata": {"k": "v"},
        "service_tier": "auto",
        "verbosity": "low",
        "prediction": {"type": "content", "content": "x"},
        "modalities": ["text"],
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "web_search_options": {},
        "audio": None,
    }
    _chat(http, **body)


def test_r2_1_unknown_vendor_fields_are_ignored(http: httpx.Client) -> None:
    _chat(http, model=REPLAY_MODEL, messages=HI, top_k=5, repetition_penalty=1.1, chat_template_kwargs={"x": 1})


def test_r2_1_validation_failures_are_400_never_422(http: httpx.Client) -> None:
    for body in (
        {"model": REPLAY_MODEL},
        {"model": REPLAY_MODEL, "messages": "hi"},
        {"model": REPLAY_MODEL, "messages": HI, "temperature": "hot"},
        {"model": REPLAY_MODEL, "messages": [{"role": "wizard", "content": "x"}]},
    ):
        error = _error(http.post("/chat/completions", json=body), 400)
        assert error["type"] == "invalid_request_error" and error["param"]
    assert _error(http.post("/chat/completions", content=b"{", headers={"content-type": "application/json"}), 400)


def test_r2_2_every_message_shape_is_accepted(http: httpx.Client) -> None:
    messages = [
        {"role": "developer", "content": "You are terse."},
        {"role": "system", "content": [{"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [{"type": "text", "text": "Read a file"}]},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "thinking",
            "reasoning": "thinking",
            "reasoning_details": [{"type": "reasoning.text", "text": "thinking"}],
            "name": "bot",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "file contents"}]},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "tool", "tool_call_id": "call_2", "content": "more"},
        {"role": "user", "content": "thanks"},
    ]
    for model in (REPLAY_MODEL, VLLM_MODEL):
        _chat(http, model=model, messages=messages, max_tokens=3)


def test_r2_2_images_for_a_text_model_are_a_clear_400(http: httpx.Client) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {"model": VLLM_MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]}
    error = _error(http.post("/chat/completions", json=body), 400)
    assert error["param"] == "messages[0].content[1]" and "text only" in error["message"]


def test_r2_3_named_tool_choice_must_be_declared(http: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
    body = {
        "model": REPLAY_MODEL,
        "messages": HI,
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "write_file"}},
    }
    assert _error(http.post("/chat/completions", json=body), 400)["param"] == "tool_choice.function.name"


def test_r2_4_oversized_cap_is_clamped_not_refused(http: httpx.Client) -> None:
    body = _chat(http, model=REPLAY_MODEL, messages=HI, max_tokens=32000)
    assert body["choices"][0]["finish_reason"] == "stop"
    body = _chat(http, model=REPLAY_MODEL, messages=HI, max_completion_tokens=10**9)
    assert body["choices"][0]["finish_reason"] == "stop"


def test_r2_5_context_overflow_is_400_context_length_exceeded(http: httpx.Client) -> None:
    long = [{"role": "user", "content": "lorem " * 9000}]
    for model in (VLLM_MODEL, REPLAY_MODEL):
        for stream in (False, True):
            error = _error(
                http.post("/chat/completions", json={"model": model, "messages": long, "stream": stream}), 400
            )
            assert error["code"] == "context_length_exceeded" and "maximum context length" in error["message"]


def test_r2_6_stream_options_without_stream_and_too_many_top_logprobs(http: httpx.Client) -> None:
    body: dict[str, Any] = {"model": REPLAY_MODEL, "messages": HI, "stream_options": {"include_usage": True}}
    assert _error(http.post("/chat/completions", json=body), 400)["param"] == "stream_options"
    body = {"model": REPLAY_MODEL, "messages": HI, "logprobs": True, "top_logprobs": 21}
    assert _error(http.post("/chat/completions", json=body), 400)["param"] == "top_logprobs"


def test_r2_sampling_seed_gives_the_same_text(http: httpx.Client) -> None:
    body = {"model": VLLM_MODEL, "messages": HI, "temperature": 1.0, "max_tokens": 24}
    first = _chat(http, **body, seed=1234)["choices"][0]["message"]["content"]
    assert _chat(http, **body, seed=1234)["choices"][0]["message"]["content"] == first


def test_r2_sampling_penalties_reach_the_engine(http: httpx.Client) -> None:
    """Greedy decoding repeats itself on a long answer; a strong frequency/presence penalty changes it."""
    body = {
        "model": VLLM_MODEL,
        "messages": [{"role": "user", "content": "List fruits."}],
        "temperature": 0,
        "max_tokens": 40,
    }
    plain = _chat(http, **body)["choices"][0]["message"]["content"]
    assert _chat(http, **body)["choices"][0]["message"]["content"] == plain  # greedy is repeatable
    assert _chat(http, **body, frequency_penalty=2.0)["choices"][0]["message"]["content"] != plain
    assert _chat(http, **body, presence_penalty=2.0)["choices"][0]["message"]["content"] != plain


def test_r2_sampling_stop_text_is_not_returned(http: httpx.Client) -> None:
    body = _chat(http, model=REPLAY_MODEL, messages=[{"role": "user", "content": "count"}], stop=[" four", "nine"])
    assert body["choices"][0]["message"]["content"] == "one two three"
    assert body["choices"][0]["finish_reason"] == "stop"
    greedy = {"model": VLLM_MODEL, "messages": HI, "temperature": 0, "max_tokens": 30}
    text = _chat(http, **greedy)["choices"][0]["message"]["content"]
    cut = text.split()[2]
    stopped = _chat(http, **greedy, stop=cut)["choices"][0]
    assert stopped["message"]["content"] == text[: text.index(cut)] and stopped["finish_reason"] == "stop"


def test_r2_sampling_logit_bias_steers_the_model(http: httpx.Client, tokenizer: Any) -> None:
    token = tokenizer.encode(" banana", add_special_tokens=False)[0]
    body = _chat(http, model=VLLM_MODEL, messages=HI, max_tokens=4, temperature=0, logit_bias={str(token): 100})
    assert body["choices"][0]["message"]["content"] == tokenizer.decode([token] * 4)
    error = _error(
        http.post("/chat/completions", json={"model": VLLM_MODEL, "messages": HI, "logit_bias": {"99999999": 1}}), 400
    )
    assert error["param"] == "logit_bias"


def test_r2_sampling_vllm_extensions_change_the_generation_as_in_vllm(http: httpx.Client) -> None:
    """R2.1 vendor fields: vLLM's sampling extensions are honoured, not dropped, so tools written for vLLM's
    server (its benchmark sends `ignore_eos`) get the same generation; out of range is a 400 naming them."""
    greedy = {"model": VLLM_MODEL, "messages": HI, "temperature": 0, "max_tokens": 48}
    natural = _chat(http, **greedy)
    assert natural["choices"][0]["finish_reason"] == "stop" and natural["usage"]["completion_tokens"] < 48
    past_eos = _chat(http, **greedy, ignore_eos=True)
    assert past_eos["usage"]["completion_tokens"] == 48 and past_eos["choices"][0]["finish_reason"] == "length"
    at_least = _chat(http, **greedy, min_tokens=natural["usage"]["completion_tokens"] + 5)
    assert at_least["usage"]["completion_tokens"] >= natural["usage"]["completion_tokens"] + 5
    single_choice = _chat(http, model=VLLM_MODEL, messages=HI, max_tokens=12, temperature=2, top_k=1, seed=1)
    assert (
        single_choice["choices"][0]["message"]["content"]
        == _chat(http, **{**greedy, "max_tokens": 12})["choices"][0]["message"]["content"]
    )
    for field, value in (("top_k", -2), ("min_p", 1.5), ("repetition_penalty", 0), ("min_tokens", 49)):
        error = _error(http.post("/chat/completions", json={**greedy, field: value}), 400)
        assert error["param"] == field, error


def test_r2_sampling_logprobs_have_openais_shape(http: httpx.Client) -> None:
    body = _chat(http, model=VLLM_MODEL, messages=HI, max_tokens=6, min_tokens=6, logprobs=True, top_logprobs=3)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    assert all(len(t["top_logprobs"]) == 3 and t["logprob"] <= 0 for t in content)
    assert "".join(t["token"] for t in content) == body["choices"][0]["message"]["content"]
    # Sampled: `min_tokens` keeps the end-of-turn token (not content) out of the six, in both calls.
    chunks = _chat_stream(
        http,
        model=VLLM_MODEL,
        messages=HI,
        max_tokens=6,
        min_tokens=6,
        logprobs=True,
        top_logprobs=2,
        stream_options={"include_usage": True},
    )
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    streamed = [t for c in choices for t in ((c.get("logprobs") or {}).get("content") or [])]
    assert len(streamed) == chunks[-1]["usage"]["completion_tokens"]
    assert all(len(t["top_logprobs"]) == 2 for t in streamed)
    assert "".join(t["token"] for t in streamed) == "".join(c["delta"].get("content") or "" for c in choices)


def test_r2_logprobs_of_an_answer_that_ends_its_turn_spell_its_content(http: httpx.Client) -> None:
    """The end-of-turn token the model stops on is no content, so it has no entry in `logprobs.content`
    (OpenAI's shape: the tokens spell the content), streamed or not."""
    ask = {"model": VLLM_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 96}
    body = _chat(http, **ask, temperature=0, logprobs=True)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop", choice  # what this test is about: the model ended its turn
    assert "".join(t["token"] for t in choice["logprobs"]["content"]) == choice["message"]["content"]
    chunks = _chat_stream(http, **ask, temperature=0, logprobs=True)
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert choices[-1]["finish_reason"] == "stop"
    streamed = [t for c in choices for t in ((c.get("logprobs") or {}).get("content") or [])]
    assert "".join(t["token"] for t in streamed) == "".join(c["delta"].get("content") or "" for c in choices)


def test_r2_sampling_n_choices_streamed_with_their_indexes(http: httpx.Client) -> None:
    body = _chat(http, model=VLLM_MODEL, messages=HI, n=2, max_tokens=8, temperature=1.0, seed=3)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    chunks = _chat_stream(
        http, model=VLLM_MODEL, messages=story, n=3, max_tokens=8, stream_options={"include_usage": True}
    )
    for index in range(3):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        finishes = [c["finish_reason"] for c in mine if c["finish_reason"]]
        assert len(finishes) == 1 and finishes[0] in ("stop", "length") and mine[-1]["finish_reason"] == finishes[0]
    assert 3 <= chunks[-1]["usage"]["completion_tokens"] <= 24  # sampled choices may end before the cap


# --- R3: non-streaming response -------------------------------------------------------------------


def test_r3_response_shape_and_usage(http: httpx.Client) -> None:
    body = _chat(http, model=VLLM_MODEL, messages=HI, max_tokens=5)
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert body["choices"][0]["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5 and usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


# --- R4: streaming --------------------------------------------------------------------------------


def test_r4_1_to_r4_4_stream_framing_roles_finish_and_usage(http: httpx.Client) -> None:
    for include_usage in (False, True):
        options = {"stream_options": {"include_usage": True}} if include_usage else {}
        chunks = _chat_stream(http, model=REPLAY_MODEL, messages=HI, **options)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(c["choices"][0]["delta"].get("role") in (None, "assistant") for c in chunks if c["choices"])
        finishes = [
            c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
        ]
        assert finishes == ["stop"]
        if include_usage:
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
            assert all(c["usage"] is None for c in chunks[:-1])
        else:
            assert all("usage" not in c for c in chunks)


def test_r4_7_keep_alive_comments_while_the_engine_is_silent(http: httpx.Client) -> None:
    """The replay reply waits 4 s before its first token; the app's keep-alive interval is 1 s."""
    response = http.post(
        "/chat/completions",
        json={"model": REPLAY_MODEL, "stream": True, "messages": [{"role": "user", "content": "think slowly"}]},
    )
    assert response.status_code == 200
    assert response.text.count(": keep-alive\n\n") >= 1
    assert _content(parse_sse(response.content)) == "Done thinking."


def test_r4_7_the_stream_starts_before_the_first_token(running_app: RunningApp) -> None:
    """R4.1/R4.7: status and headers go out at once, keep-alives follow while the engine is silent, and
    only then the first chunk: the role chunk, with the first token right behind it (clients time the
    first chunk as the first token). Lines in arrival order, no clock involved."""
    body = {"model": REPLAY_MODEL, "stream": True, "messages": [{"role": "user", "content": "think slowly"}]}
    with httpx.stream("POST", f"{running_app.base_url}/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    role = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert '"role":"assistant"' in lines[role] and '"content":"D' in lines[role + 1]
    assert role > 0 and all(line == ": keep-alive" for line in lines[:role])


def test_r4_8_failure_mid_stream_is_an_error_event_then_done(http: httpx.Client) -> None:
    """R5.2 too: the event names the request's id, and the replica's log has the traceback under it."""
    chunks = _chat_stream(http, model=REPLAY_MODEL, messages=[{"role": "user", "content": "break down"}])
    assert _content(chunks[:-1]).startswith("This answer")
    error, request_id = chunks[-1]["error"], chunks[0]["id"]
    assert error["type"] == "server_error" and request_id in error["message"]
    assert "scripted failure" not in error["message"]
    assert "RuntimeError: scripted failure" in _logged_story(request_id)


def _logged_story(request_id: str, within_s: float = 20.0) -> str:
    """What Ray's logs of this session say from the first line naming `request_id` on (logs are flushed
    by the replicas' processes on their own schedule, hence the wait)."""
    deadline = time.monotonic() + within_s
    while True:
        for path in sorted(Path("/tmp/ray/session_latest/logs").rglob("*")):
            if path.is_file() and request_id.encode() in (content := path.read_bytes()):
                return content[content.index(request_id.encode()) :].decode(errors="replace")[:5000]
        assert time.monotonic() < deadline, f"no log names {request_id}"
        time.sleep(0.5)


def test_r4_8_client_disconnect_aborts_generation(running_app: RunningApp) -> None:
    from ray import serve

    engine = serve.get_deployment_handle(f"LLMServer:{VLLM_MODEL}", app_name=running_app.app_name)

    def queue_depth() -> float:
        return cast(float, engine.record_autoscaling_stats.remote().result()[ENGINE_QUEUE_METRIC])

    body = {
        "model": VLLM_MODEL,
        "stream": True,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "Write a long essay."}],
    }
    with httpx.stream("POST", f"{running_app.base_url}/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert queue_depth() == 1
    deadline = time.monotonic() + 20
    while queue_depth() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queue_depth() == 0


# --- R5: errors -----------------------------------------------------------------------------------


def test_r5_envelope_on_every_error_status(http: httpx.Client) -> None:
    assert _error(http.get("/no/such/route"), 404)["type"] == "not_found_error"
    assert _error(http.get("/chat/completions"), 405)
    assert (
        _error(http.post("/chat/completions", json={"model": "nope", "messages": HI}), 404)["code"] == "model_not_found"
    )
    huge = {"model": REPLAY_MODEL, "messages": [{"role": "user", "content": "x" * 1_200_000}]}
    assert _error(http.post("/chat/completions", json=huge), 413)["code"] == "request_too_large"


# --- /v1/completions ------------------------------------------------------------------------------


def _completion(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/completions", json=body)
    assert response.status_code == 200, response.text
    assert_valid(response.json(), "CreateCompletionResponse")
    return cast(dict[str, Any], response.json())


def test_completions_prompt_forms(http: httpx.Client, tokenizer: Any) -> None:
    one = _completion(http, model=VLLM_MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert one["object"] == "text_completion" and one["usage"]["completion_tokens"] == 5
    ids = tokenizer.encode("The capital of France is", add_special_tokens=False)
    by_ids = _completion(http, model=VLLM_MODEL, prompt=ids, max_tokens=5, temperature=0)
    assert by_ids["choices"][0]["text"] == one["choices"][0]["text"]
    several = _completion(http, model=VLLM_MODEL, prompt=["One", "Two"], n=2, max_tokens=3)
    assert sorted(c["index"] for c in several["choices"]) == [0, 1, 2, 3]
    assert several["usage"]["completion_tokens"] == 12


def test_completions_echo_logprobs_and_default_cap(http: httpx.Client) -> None:
    echoed = _completion(http, model=REPLAY_MODEL, prompt="please count", echo=True)
    assert echoed["choices"][0]["text"].startswith("please countone two")
    default_cap = _completion(http, model=VLLM_MODEL, prompt="Once upon a time")
    assert default_cap["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens here
    scored = _completion(http, model=VLLM_MODEL, prompt="Hello", max_tokens=4, logprobs=2)
    lp = scored["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert "".join(lp["tokens"]) == scored["choices"][0]["text"]
    assert lp["text_offset"][0] == 0


def test_completions_suffix_and_best_of_are_refused_clearly(http: httpx.Client) -> None:
    assert (
        _error(http.post("/completions", json={"model": VLLM_MODEL, "prompt": "a", "suffix": "b"}), 400)["param"]
        == "suffix"
    )
    assert (
        _error(http.post("/completions", json={"model": VLLM_MODEL, "prompt": "a", "best_of": 3}), 400)["param"]
        == "best_of"
    )


def test_completions_stream(http: httpx.Client) -> None:
    response = http.post(
        "/completions",
        json={"model": REPLAY_MODEL, "prompt": "count", "stream": True, "stream_options": {"include_usage": True}},
    )
    chunks = parse_sse(response.content)
    for chunk in chunks:
        _completion_chunk_valid(chunk)
    assert (
        "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        == "one two three four five six seven eight nine ten"
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == [
        "stop"
    ]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10


# --- The captured Cline requests ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cline-3.0.65-first-turn.json", "cline-3.0.65-tool-result-turn.json"])
def test_captured_cline_requests_replay_unchanged(http: httpx.Client, name: str) -> None:
    """The exact bodies a real agent sends (25 tools, tool_choice auto, include_usage): 200 and an R4 stream."""
    capture = json.loads((reference_dir() / "client-requests" / name).read_text())
    body = {**capture["body"], "model": REPLAY_MODEL}
    headers = {k: v for k, v in capture["headers"].items() if k.lower() not in ("content-length", "accept-encoding")}
    response = http.post("/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    chunks = parse_sse(response.content)
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == [
        "stop"
    ]
    # Cline's system prompt alone is ~890 tokens (its tool schemas reach the prompt with tool calling).
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 800
    assert _content(chunks)
