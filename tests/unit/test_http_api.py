"""The HTTP surface without Ray: status codes, the error envelope, auth (R1.2, R1.5, R5.1)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from serve_app.config import ServerOptions
from serve_app.engines.replay import ReplayEngine
from serve_app.http_api import _WholeBody, create_http_app
from serve_app.keys import hash_key
from serve_app.protocol.errors import unavailable
from serve_app.rate_limits import Ledger, LocalLedger
from tests.conftest import REPLAY_SCRIPT
from tests.in_process import BreakingBackend, InProcessBackend
from tests.openai_spec import assert_valid
from tests.sse_client import parse_sse


def _client(tokenizer: Any, api_keys: list[str] | None = None) -> TestClient:
    backend = InProcessBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    return TestClient(create_http_app(backend, ServerOptions(api_keys=api_keys or [])))


@pytest.fixture
def client(tokenizer: Any) -> TestClient:
    return _client(tokenizer)


HELLO = {"model": "replay-model", "messages": [{"role": "user", "content": "hi"}]}
HI: Any = HELLO["messages"]


def _assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert_valid(body, "ErrorResponse")
    if code is not None:
        assert body["error"]["code"] == code
    return cast(dict[str, Any], body["error"])


def test_models_list_shape(client: TestClient) -> None:
    """R1.5: OpenAI's shape, plus the context length (the one extra field, which clients may use)."""
    body = client.get("/v1/models").json()
    assert [card.pop("max_model_len") for card in body["data"]] == [512]
    assert_valid(body, "ListModelsResponse")
    assert [m["id"] for m in body["data"]] == ["replay-model"]


def test_chat_returns_the_engines_body(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert_valid(response.json(), "CreateChatCompletionResponse")


def test_stream_is_event_stream_ending_with_done(client: TestClient) -> None:
    """R4.1."""
    response = client.post("/v1/chat/completions", json={**HELLO, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = parse_sse(response.content)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).startswith("Hello! I am the replay")


def test_unknown_model_is_404_model_not_found(client: TestClient) -> None:
    """R1.5, R5.2."""
    error = _assert_error(client.post("/v1/chat/completions", json={**HELLO, "model": "gpt-9"}), 404, "model_not_found")
    assert "gpt-9" in error["message"] and error["param"] == "model"


def test_invalid_body_is_400_never_422(client: TestClient) -> None:
    """R2.1: validation failures are 400 with the envelope, naming the field."""
    error = _assert_error(client.post("/v1/chat/completions", json={**HELLO, "temperature": 9}), 400)
    assert error["param"] == "temperature"
    _assert_error(
        client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}), 400
    )


def test_errors_before_the_stream_starts_keep_their_status(client: TestClient) -> None:
    """R2.5 on a streaming request: a real 400, not a 200 stream carrying an error."""
    body = {**HELLO, "stream": True, "messages": [{"role": "user", "content": "word " * 600}]}
    _assert_error(client.post("/v1/chat/completions", json=body), 400, "context_length_exceeded")


def test_unknown_route_is_404_with_envelope(client: TestClient) -> None:
    """R5.1: every non-2xx body is the envelope."""
    _assert_error(client.get("/v1/nothing-here"), 404)
    _assert_error(client.get("/v1/chat/completions"), 405)


def test_api_keys_are_enforced_when_configured(tokenizer: Any) -> None:
    """R1.2: 401 with the envelope without a valid bearer key; any configured key works."""
    client = _client(tokenizer, api_keys=["key-one", "key-two"])
    _assert_error(client.get("/v1/models"), 401, "invalid_api_key")
    _assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
    for key in ("key-one", "key-two"):
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": "bearer  key-two "}).status_code == 200
    # R1.3: a browser's preflight carries no key and must pass; the 401 itself carries CORS headers.
    preflight = client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "vscode-webview://x",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
    denied = client.post("/v1/chat/completions", json=HELLO, headers={"Origin": "vscode-webview://x"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "*"


def test_a_keys_file_decides_who_may_call_which_model(tokenizer: Any, tmp_path: Any) -> None:
    """Issue #20: keys from a keys file (hashes only); a revoked or unknown key is a 401, a model the key may
    not use is a 404 `model_not_found` as OpenAI answers it (and missing from `/v1/models`); the file is
    re-read when it changes, without a restart."""
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n"
        f"  - {{name: alice, sha256: {hash_key('sk-alice')}, models: [replay-model]}}\n"
        f"  - {{name: bob, sha256: {hash_key('sk-bob')}, models: [another-model]}}\n"
        f"  - {{name: carol, sha256: {hash_key('sk-carol')}, revoked: true}}\n"
    )
    backend = InProcessBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    options = ServerOptions(keys_file=str(path), keys_reload_interval_s=0.01)
    client = TestClient(create_http_app(backend, options))

    def as_(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    assert client.post("/v1/chat/completions", json=HELLO, headers=as_("sk-alice")).status_code == 200
    assert [m["id"] for m in client.get("/v1/models", headers=as_("sk-alice")).json()["data"]] == ["replay-model"]
    error = _assert_error(client.post("/v1/chat/completions", json=HELLO, headers=as_("sk-bob")), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert client.get("/v1/models", headers=as_("sk-bob")).json()["data"] == []
    _assert_error(client.get("/v1/models/replay-model", headers=as_("sk-bob")), 404, "model_not_found")
    assert (
        "revoked" in _assert_error(client.get("/v1/models", headers=as_("sk-carol")), 401, "invalid_api_key")["message"]
    )
    _assert_error(client.get("/v1/models", headers=as_("sk-alice-typo")), 401, "invalid_api_key")
    path.write_text(path.read_text().replace("another-model", "replay-model"))
    time.sleep(0.05)
    assert client.post("/v1/chat/completions", json=HELLO, headers=as_("sk-bob")).status_code == 200


def test_a_key_over_its_limits_gets_openais_429_and_every_answer_its_rate_limit_headers(
    tokenizer: Any, tmp_path: Any
) -> None:
    """Issue #20: `x-ratelimit-*-requests` on every answer of a limited key, a 429 `rate_limit_exceeded` with
    them and both retry headers past the limit; a stream holds its concurrency slot until it ends."""
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n"
        f"  - {{name: alice, sha256: {hash_key('sk-alice')}, limits: {{requests_per_minute: 3}}}}\n"
        f"  - {{name: bob, sha256: {hash_key('sk-bob')}, limits: {{concurrent_requests: 1}}}}\n"
    )
    backend = InProcessBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    client = TestClient(create_http_app(backend, ServerOptions(keys_file=str(path))))
    alice = {"Authorization": "Bearer sk-alice"}
    answers = [client.post("/v1/chat/completions", json=HELLO | {"stream": i == 1}, headers=alice) for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "3" for a in answers)
    refused = client.post("/v1/chat/completions", json=HELLO, headers=alice)
    error = _assert_error(refused, 429, "rate_limit_exceeded")
    assert "requests per minute: limit 3" in error["message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    assert int(refused.headers["retry-after-ms"]) == pytest.approx(20_000, abs=100)
    assert client.get("/v1/models", headers=alice).status_code == 200  # listing models is not limited
    bob = {"Authorization": "Bearer sk-bob"}
    for _ in range(3):  # one at a time: each stream gives its slot back when it ends
        assert client.post("/v1/chat/completions", json=HELLO | {"stream": True}, headers=bob).status_code == 200
    import httpx

    release = asyncio.Event()

    class HeldBackend(InProcessBackend):
        async def generate(self, request: Any, context: Any = None) -> Any:
            await release.wait()
            return await super().generate(request)

    held_app = create_http_app(
        HeldBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer),
        ServerOptions(keys_file=str(path)),
    )

    async def one_at_a_time() -> None:
        transport = httpx.ASGITransport(app=held_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=bob) as http:
            held = asyncio.create_task(http.post("/v1/chat/completions", json=HELLO))
            await asyncio.sleep(0.1)
            second = await http.post("/v1/chat/completions", json=HELLO)
            assert second.status_code == 429 and "concurrent requests: limit 1" in second.json()["error"]["message"]
            release.set()
            assert (await held).status_code == 200
            assert (await http.post("/v1/chat/completions", json=HELLO)).status_code == 200

    asyncio.run(one_at_a_time())


def test_a_key_is_charged_the_tokens_its_answers_used_streamed_or_not(tokenizer: Any, tmp_path: Any) -> None:
    """Issue #20: tokens per minute count what the usage fields count, a stream's too when the client did not
    ask for its usage chunk; past the limit a 429 of type `tokens` with `x-ratelimit-*-tokens`."""
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys: [{{name: kim, sha256: {hash_key('sk-kim')}, limits: {{tokens_per_minute: 200}}}}]\n")
    backend = InProcessBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    app = create_http_app(backend, ServerOptions(keys_file=str(path)), LocalLedger(Ledger(lambda: 0.0)))
    client, kim = TestClient(app), {"Authorization": "Bearer sk-kim"}
    whole = client.post("/v1/chat/completions", json=HELLO, headers=kim)
    used = whole.json()["usage"]["total_tokens"]
    assert whole.headers["x-ratelimit-limit-tokens"] == "200"
    assert whole.headers["x-ratelimit-remaining-tokens"] == "200"  # charged when the answer ends
    streamed = client.post("/v1/chat/completions", json=HELLO | {"stream": True}, headers=kim)
    assert "usage" not in streamed.text  # not asked for, yet counted
    assert int(streamed.headers["x-ratelimit-remaining-tokens"]) == 200 - used
    spent = 2 * used
    while spent < 200:  # the minute's tokens run out
        spent += client.post("/v1/chat/completions", json=HELLO, headers=kim).json()["usage"]["total_tokens"]
    refused = client.post("/v1/chat/completions", json=HELLO, headers=kim)
    error = _assert_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "tokens" and "tokens per minute: limit 200" in error["message"]
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    # Refilled at 200 a minute, the debt and one more token take this long.
    assert int(refused.headers["retry-after-ms"]) == pytest.approx((spent - 200 + 1) * 300, abs=1)


def test_the_engine_knows_whose_request_it_runs_for_its_fair_share(tokenizer: Any, tmp_path: Any) -> None:
    """Issue #20: the caller's name and priority reach the engine's admission with each generation."""
    seen: list[tuple[str, int]] = []

    class Recording(ReplayEngine):
        def generate(self, request: Any) -> Any:
            seen.append((request.caller, request.priority))
            return super().generate(request)

    path = tmp_path / "keys.yaml"
    path.write_text(f"keys: [{{name: mo, sha256: {hash_key('sk-mo')}, priority: 2}}]\n")
    backend = InProcessBackend("replay-model", Recording(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    client = TestClient(create_http_app(backend, ServerOptions(keys_file=str(path))))
    mo = {"Authorization": "Bearer sk-mo"}
    client.post("/v1/chat/completions", json=HELLO, headers=mo)
    client.post("/v1/completions", json={"model": "replay-model", "prompt": "hi", "stream": True}, headers=mo)
    assert seen == [("mo", 2), ("mo", 2)]


def test_the_openai_sdk_waits_out_a_rate_limit_by_its_retry_headers(tokenizer: Any, tmp_path: Any) -> None:
    """Issue #20: the official SDK reads `retry-after-ms` from our 429, waits, and its retry is let in. At 20
    requests a minute a permit takes 3 s to flow back in: longer than the SDK's own backoff for two retries
    (0.5 s, then 1 s), so only a client that waited as told gets in with its first retry."""
    import httpx2  # what the OpenAI SDK's own HTTP client is built on
    import openai

    path = tmp_path / "keys.yaml"
    path.write_text(f"keys: [{{name: alice, sha256: {hash_key('sk-alice')}, limits: {{requests_per_minute: 20}}}}]\n")
    frozen_at: list[float] = [time.monotonic()]  # the ledger's time stands still until the allowance is spent

    def ledger_clock() -> float:
        return frozen_at[0] if frozen_at[1:] == [] else frozen_at[0] + time.monotonic() - frozen_at[1]

    backend = InProcessBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    app = create_http_app(backend, ServerOptions(keys_file=str(path)), LocalLedger(Ledger(ledger_clock)))

    async def scenario() -> None:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
        sdk = openai.AsyncOpenAI(api_key="sk-alice", base_url="http://test/v1", http_client=http, max_retries=2)
        for _ in range(20):  # the whole minute's allowance, without retries
            await sdk.with_options(max_retries=0).chat.completions.create(model="replay-model", messages=HI)
        frozen_at.append(time.monotonic())
        raw = await sdk.chat.completions.with_raw_response.create(model="replay-model", messages=HI)
        assert raw.retries_taken == 1 and raw.parse().choices[0].finish_reason == "stop"

    asyncio.run(scenario())


def test_without_keys_any_authorization_is_accepted(client: TestClient) -> None:
    """R1.2."""
    assert client.get("/v1/models", headers={"Authorization": "Bearer anything"}).status_code == 200


def test_strict_mode_rejects_unknown_fields_naming_them(tokenizer: Any) -> None:
    """R2.1: strict servers refuse vendor fields with 400 naming the param; OpenAI's own fields still pass."""
    backend = InProcessBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    strict = TestClient(create_http_app(backend, ServerOptions(strict_request_fields=True)))
    error = _assert_error(strict.post("/v1/chat/completions", json={**HELLO, "top_k": 5}), 400)
    assert error["param"] == "top_k" and "top_k" in error["message"]
    error = _assert_error(strict.post("/v1/chat/completions", json={**HELLO, "vendor_knob": 1}), 400)
    assert error["param"] == "vendor_knob"
    assert strict.post("/v1/chat/completions", json={**HELLO, "store": True, "metadata": {}}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/v1//models", "/v1///models"])
def test_paths_are_canonicalised(client: TestClient, path: str) -> None:
    """R1.1."""
    assert client.get(path).status_code == 200


def test_validation_error_param_uses_openai_paths(client: TestClient) -> None:
    body = {**HELLO, "messages": [{"role": "user", "content": 5}]}
    assert _assert_error(client.post("/v1/chat/completions", json=body), 400)["param"] == "messages[0].content"


def test_unexpected_failures_still_answer_with_the_envelope(tokenizer: Any, caplog: pytest.LogCaptureFixture) -> None:
    """R5.1, R5.2: even a crash inside the server is the envelope (500), never a bare text body; it gives an
    id and not the exception's text, which the log has under that id, traceback included."""

    class CrashingBackend(InProcessBackend):
        async def generate(self, request: Any, context: Any = None) -> Any:
            raise RuntimeError("disk on fire")

    backend = CrashingBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    client = TestClient(create_http_app(backend, ServerOptions()), raise_server_exceptions=False)
    error = _assert_error(client.post("/v1/chat/completions", json=HELLO, headers={"x-request-id": "r-42"}), 500)
    assert error["type"] == "server_error" and "disk on fire" not in error["message"] and "r-42" in error["message"]
    (logged,) = [r for r in caplog.records if "r-42" in r.getMessage()]
    assert logged.exc_info is not None and "disk on fire" in str(logged.exc_info[1])


JSON = {"content-type": "application/json"}


def _chunked(body: bytes, pieces: int, pause_s: float = 0.0) -> Iterator[bytes]:
    """A body sent in pieces without a content-length (chunked), optionally slowly."""
    size = -(-len(body) // pieces)
    for start in range(0, len(body), size):
        time.sleep(pause_s)
        yield body[start : start + size]


def test_a_chunked_body_over_the_limit_is_413(tokenizer: Any) -> None:
    backend = InProcessBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    client = TestClient(create_http_app(backend, ServerOptions(max_request_body_bytes=2048)))
    huge = json.dumps({**HELLO, "messages": [{"role": "user", "content": "x" * 4000}]}).encode()
    response = client.post("/v1/chat/completions", content=_chunked(huge, 8), headers=JSON)
    _assert_error(response, 413, "request_too_large")
    small = json.dumps(HELLO).encode()
    assert client.post("/v1/chat/completions", content=_chunked(small, 4), headers=JSON).status_code == 200


def test_a_body_slower_than_the_timeout_is_408() -> None:
    """Driven at the ASGI level: the test client reads a streamed body whole before the app sees it."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    async def call(pause_s: float) -> list[Message]:
        pieces = [b'{"a": ', b"1}"]

        async def receive() -> Message:
            await asyncio.sleep(pause_s)
            body = pieces.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pieces)}

        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
        await _WholeBody(app, max_bytes=1024, timeout_s=0.2)(scope, receive, send)
        return sent

    slow = asyncio.run(call(pause_s=0.15))
    assert slow[0]["status"] == 408 and json.loads(slow[1]["body"])["error"]["code"] == "request_timeout"
    prompt = asyncio.run(call(pause_s=0.0))
    assert prompt[0]["status"] == 200 and prompt[1]["body"] == b'{"a": 1}'


def test_no_capacity_is_a_503_with_retry_after(tokenizer: Any) -> None:
    """R5.2, R10.2: a backend without capacity answers a value the surface turns into a 503 with both
    `Retry-After` forms, which the SDKs wait out before retrying."""

    class FullBackend(InProcessBackend):
        async def generate(self, request: Any, context: Any = None) -> Any:
            return unavailable("The server is at capacity; retry shortly.", retry_after_s=2.5)

    backend = FullBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    response = TestClient(create_http_app(backend, ServerOptions())).post("/v1/chat/completions", json=HELLO)
    _assert_error(response, 503, "service_unavailable")
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("3", "2500")


def test_a_failure_after_the_stream_started_ends_it_with_an_error_event_and_done(
    tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """R4.8: whatever breaks once the stream is committed (a replica lost in a way the backend did not turn
    into a value), the client gets an error event naming the request id, then [DONE], never a cut body."""

    backend = BreakingBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    client = TestClient(create_http_app(backend, ServerOptions()))
    response = client.post("/v1/chat/completions", json={**HELLO, "stream": True}, headers={"x-request-id": "r-7"})
    assert response.status_code == 200
    chunks = parse_sse(response.content)  # asserts the stream ends with [DONE]
    assert chunks[-1]["error"]["type"] == "server_error" and "r-7" in chunks[-1]["error"]["message"]
    (logged,) = [r for r in caplog.records if "r-7" in r.getMessage()]
    assert logged.exc_info is not None and "went away" in str(logged.exc_info[1])


def test_nothing_follows_done_even_when_the_upstream_ends_late(tokenizer: Any) -> None:
    """R4.1: `[DONE]` is the last thing on the wire. Under load (a thousand streams in the reliability lane),
    the upstream's end came more than a keep-alive interval after its last frame, and a keep-alive followed
    `[DONE]`."""

    class LateEndingBackend(InProcessBackend):
        async def generate_stream(self, request: Any, context: Any = None) -> Any:
            async for frame in super().generate_stream(request):
                yield frame
            await asyncio.sleep(0.35)  # three keep-alive intervals between [DONE] and the end

    backend = LateEndingBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    client = TestClient(create_http_app(backend, ServerOptions(keep_alive_interval_s=0.1)))
    response = client.post("/v1/chat/completions", json={**HELLO, "stream": True})
    assert response.content.endswith(b"data: [DONE]\n\n"), response.content[-60:]
    assert parse_sse(response.content)[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_request_past_the_deadline_is_stopped_and_answered(tokenizer: Any) -> None:
    """Issue #19: past `request_deadline_s`, a whole answer is a 504 `deadline_exceeded` and a stream ends with
    that error event and [DONE] (at its next frame or keep-alive); either way the backend's call is cancelled,
    which stops the generation."""
    stopped: list[str] = []

    class SlowBackend(InProcessBackend):
        async def generate(self, request: Any, context: Any = None) -> Any:
            try:
                await asyncio.sleep(30)
            finally:
                stopped.append("whole")

        async def generate_stream(self, request: Any, context: Any = None) -> Any:
            try:
                while True:
                    yield b'data: {"choices": []}\n\n'
                    await asyncio.sleep(0.05)
            finally:
                stopped.append("stream")

    backend = SlowBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    options = ServerOptions(request_deadline_s=0.3, keep_alive_interval_s=0.1)
    client = TestClient(create_http_app(backend, options))
    error = _assert_error(client.post("/v1/chat/completions", json=HELLO), 504, "deadline_exceeded")
    assert "0.3 s" in error["message"]
    response = client.post("/v1/chat/completions", json={**HELLO, "stream": True})
    assert response.status_code == 200
    assert parse_sse(response.content)[-1]["error"]["code"] == "deadline_exceeded"
    assert sorted(stopped) == ["stream", "whole"]


def test_past_the_ingress_capacity_a_request_is_refused_at_once_with_a_503(tokenizer: Any) -> None:
    """Issue #19: an ingress replica holds at most `server.ingress.max_ongoing_requests` requests; one more is
    refused at once (503, both retry headers, OpenAI's body) instead of waiting without a bound; listing
    models is not counted; a freed place is taken again."""
    import httpx

    release = asyncio.Event()

    class HeldBackend(InProcessBackend):
        async def generate(self, request: Any, context: Any = None) -> Any:
            await release.wait()
            return await super().generate(request)

    backend = HeldBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    options = ServerOptions.model_validate({"ingress": {"num_cpus": 0, "max_ongoing_requests": 2}})
    app = create_http_app(backend, options)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            held = [asyncio.create_task(client.post("/v1/chat/completions", json=HELLO)) for _ in range(2)]
            await asyncio.sleep(0.1)
            refused = await client.post("/v1/chat/completions", json=HELLO)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
            assert refused.headers["retry-after"] == "1" and refused.headers["retry-after-ms"] == "1000"
            assert_valid(refused.json(), "ErrorResponse")
            assert (await client.get("/v1/models")).status_code == 200
            release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert (await client.post("/v1/chat/completions", json=HELLO)).status_code == 200

    asyncio.run(scenario())


def test_a_client_that_leaves_a_whole_answer_cancels_the_generation(tokenizer: Any) -> None:
    """Issue #19: a non-streaming request whose client disconnects is cancelled at once (Serve passes the
    cancellation down to the engine), not generated to the end for nobody."""
    cancelled = asyncio.Event()

    class SlowBackend(InProcessBackend):
        async def generate(self, request: Any, context: Any = None) -> Any:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    backend = SlowBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    app = create_http_app(backend, ServerOptions())
    body = json.dumps(HELLO).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("client", 1),
        "root_path": "",
    }

    async def scenario() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            if messages:
                return messages.pop()
            await asyncio.sleep(0.2)  # the client leaves while the answer is generated
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            pass

        await asyncio.wait_for(app(scope, receive, send), timeout=10)
        assert cancelled.is_set()

    asyncio.run(scenario())


def test_completions_report_cached_prompt_tokens(client: TestClient) -> None:
    """A repeated prompt finds its prefix cached: `usage.prompt_tokens_details.cached_tokens`, whole and streamed."""
    body = {"model": "replay-model", "prompt": "count " * 60, "max_tokens": 3}
    assert client.post("/v1/completions", json=body).json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    usage = client.post("/v1/completions", json=body).json()["usage"]
    assert 0 < usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    chunks = parse_sse(client.post("/v1/completions", json=streamed).content)
    assert chunks[-1]["usage"] == usage
