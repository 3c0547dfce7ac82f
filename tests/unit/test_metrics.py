"""`serve_app/metrics.py`: what the ingress records of each request (issue #20), through a sink that keeps
the values; the Ray sink and a real Prometheus are checked in `tests/distributed/test_metrics.py`."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi.testclient import TestClient

from serve_app.config import ServerOptions
from serve_app.engines.replay import ReplayEngine
from serve_app.http_api import create_http_app
from serve_app.keys import hash_key
from serve_app.metrics import (
    ERRORS,
    IN_FLIGHT,
    INTER_TOKEN_LATENCY,
    RATE_LIMITED,
    REQUEST_DURATION,
    REQUESTS,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    Metric,
)
from tests.conftest import REPLAY_SCRIPT
from tests.in_process import BreakingBackend, InProcessBackend

HELLO = {"model": "replay-model", "messages": [{"role": "user", "content": "hi"}]}
Labels = tuple[tuple[str, str], ...]


class KeptMetrics:
    """A `MetricsSink` that keeps what it is given: sums for counters, values for histograms and gauges."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.values: dict[str, dict[Labels, list[float]]] = defaultdict(lambda: defaultdict(list))

    def count(self, metric: Metric, value: float, labels: dict[str, str]) -> None:
        assert set(labels) == set(metric.labels), (metric.name, labels)
        self.sums[metric.name][tuple(sorted(labels.items()))] += value

    def observe(self, metric: Metric, value: float, labels: dict[str, str]) -> None:
        assert set(labels) == set(metric.labels) and value >= 0, (metric.name, labels, value)
        self.values[metric.name][tuple(sorted(labels.items()))].append(value)

    def set(self, metric: Metric, value: float, labels: dict[str, str]) -> None:
        self.observe(metric, value, labels)

    def sum(self, metric: Metric, **labels: str) -> float:
        return sum(v for k, v in self.sums[metric.name].items() if set(labels.items()) <= set(k))

    def observed(self, metric: Metric, **labels: str) -> list[float]:
        return [x for k, v in self.values[metric.name].items() if set(labels.items()) <= set(k) for x in v]


def _app(tokenizer: Any, tmp_path: Any, backend: InProcessBackend | None = None) -> tuple[TestClient, KeptMetrics]:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "teams: {core: {}}\n"
        "keys:\n"
        f"  - {{name: alice, team: core, sha256: {hash_key('sk-alice')}}}\n"
        f"  - {{name: bob, sha256: {hash_key('sk-bob')}, limits: {{requests_per_minute: 1}}}}\n"
    )
    backend = backend or InProcessBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    kept = KeptMetrics()
    return TestClient(create_http_app(backend, ServerOptions(keys_file=str(path)), metrics=kept)), kept


ALICE = {"Authorization": "Bearer sk-alice"}


def test_each_request_is_counted_with_its_key_team_model_route_status_and_tokens(tokenizer: Any, tmp_path: Any) -> None:
    client, kept = _app(tokenizer, tmp_path)
    whole = client.post("/v1/chat/completions", json=HELLO, headers=ALICE).json()["usage"]
    client.post("/v1/chat/completions", json=HELLO | {"stream": True}, headers=ALICE)  # usage not asked for
    who = {"key": "alice", "team": "core", "model": "replay-model"}
    assert kept.sum(REQUESTS, **who, route="/v1/chat/completions", status="200") == 2
    assert kept.sum(TOKENS, **who, kind="prompt") == 2 * whole["prompt_tokens"]
    assert kept.sum(TOKENS, **who, kind="completion") == 2 * whole["completion_tokens"]
    assert whole["prompt_tokens_details"]["cached_tokens"] == 0
    assert kept.sum(TOKENS, **who, kind="cached") > 0  # the stream's prompt was the first's: its prefix cached
    assert len(kept.observed(REQUEST_DURATION, model="replay-model", route="/v1/chat/completions")) == 2
    assert len(kept.observed(TIME_TO_FIRST_TOKEN, model="replay-model")) == 1  # the stream's only
    assert len(kept.observed(INTER_TOKEN_LATENCY, model="replay-model")) == 1
    assert kept.observed(IN_FLIGHT, route="/v1/chat/completions") == [1, 0, 1, 0]
    assert not kept.sums[ERRORS.name]


def test_refusals_count_as_errors_by_code_and_rate_limits_by_kind(tokenizer: Any, tmp_path: Any) -> None:
    client, kept = _app(tokenizer, tmp_path)
    client.post("/v1/chat/completions", json=HELLO, headers={"Authorization": "Bearer sk-nobody"})
    client.post("/v1/chat/completions", json=HELLO | {"model": "made-up"}, headers=ALICE)
    bob = {"Authorization": "Bearer sk-bob"}
    assert [
        client.post("/v1/embeddings", json={"model": "m", "input": "x"}, headers=bob).status_code for _ in "ab"
    ] == [
        404,  # the one request bob's minute allows: not a generating model
        429,
    ]
    assert kept.sum(REQUESTS, key="anonymous", model="", status="401") == 1
    assert kept.sum(REQUESTS, key="alice", model="", status="404") == 1  # a made-up name is not a label
    assert kept.sum(ERRORS, code="invalid_api_key") == 1
    assert kept.sum(ERRORS, code="model_not_found", route="/v1/embeddings") == 1
    assert kept.sum(RATE_LIMITED, key="bob", team="", type="requests") == 1
    assert kept.sum(ERRORS, code="rate_limit_exceeded", route="/v1/embeddings") == 1


def test_a_stream_that_fails_after_it_started_counts_its_error_events_code(tokenizer: Any, tmp_path: Any) -> None:
    backend = BreakingBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    client, kept = _app(tokenizer, tmp_path, backend)
    assert client.post("/v1/chat/completions", json=HELLO | {"stream": True}, headers=ALICE).status_code == 200
    assert kept.sum(REQUESTS, key="alice", status="200") == 1
    assert kept.sum(ERRORS, model="replay-model", code="internal_error") == 1


def test_responses_requests_are_counted_like_chat(tokenizer: Any, tmp_path: Any) -> None:
    """`/v1/responses` (R9) is metered as chat is: tokens as its `usage` counts them (`input_tokens`,
    `output_tokens`), the first event of a stream as its first token, a `response.failed` as an error."""
    client, kept = _app(tokenizer, tmp_path)
    ask = {"model": "replay-model", "input": "please count"}
    whole = client.post("/v1/responses", json=ask, headers=ALICE).json()["usage"]
    client.post("/v1/responses", json=ask | {"stream": True}, headers=ALICE)
    client.post("/v1/responses", json=ask | {"input": "break down", "stream": True}, headers=ALICE)
    who = {"key": "alice", "team": "core", "model": "replay-model"}
    assert kept.sum(REQUESTS, **who, route="/v1/responses", status="200") == 3
    assert kept.sum(TOKENS, **who, kind="completion") == 2 * whole["output_tokens"] + 3  # the broken one: 3
    assert len(kept.observed(TIME_TO_FIRST_TOKEN, model="replay-model")) == 2
    assert kept.sum(ERRORS, model="replay-model", route="/v1/responses", code="server_error") == 1
