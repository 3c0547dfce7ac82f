"""`serve_app/tracing.py` and the ingress's part of it (issue #20): the request's span continues the client's
W3C trace, carries the GenAI attributes and is returned in `traceparent`; a hop's span is a child of the
span that called it, and a wait in the engine's queue a child of the hop. Spans are kept by the SDK's own
in-memory exporter; the real OTLP path is `tests/distributed/test_tracing.py`."""

from __future__ import annotations

import contextvars
from typing import Any

from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from serve_app.config import ServerOptions, TracingOptions
from serve_app.engines.replay import ReplayEngine
from serve_app.http_api import create_http_app
from serve_app.tracing import Tracing
from tests.conftest import REPLAY_SCRIPT
from tests.in_process import InProcessBackend

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
HELLO = {"model": "replay-model", "messages": [{"role": "user", "content": "hi"}]}


def _traced(tokenizer: Any, sample_ratio: float = 1.0) -> tuple[TestClient, Tracing, InMemorySpanExporter]:
    kept = InMemorySpanExporter()
    tracing = Tracing(TracingOptions(otlp_endpoint="unused", sample_ratio=sample_ratio), kept)
    backend = InProcessBackend("replay-model", ReplayEngine(tokenizer, REPLAY_SCRIPT, 512, 0.0), tokenizer)
    return TestClient(create_http_app(backend, ServerOptions(), tracing=tracing)), tracing, kept


def _spans(tracing: Tracing, kept: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing.shutdown()  # sends what the batch processor holds
    return list(kept.get_finished_spans())


def test_a_request_continues_the_clients_trace_with_genai_attributes_and_returns_it(tokenizer: Any) -> None:
    client, tracing, kept = _traced(tokenizer)
    answer = client.post(
        "/v1/chat/completions",
        json=HELLO | {"stream": True, "stream_options": {"include_usage": True}},
        headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
    )
    usage = [line for line in answer.text.splitlines() if '"usage":{' in line][-1]
    (span,) = _spans(tracing, kept)
    context = span.context
    assert context is not None and span.parent is not None
    assert (format(context.trace_id, "032x"), format(span.parent.span_id, "016x")) == (CLIENT_TRACE, CLIENT_SPAN)
    assert answer.headers["traceparent"] == f"00-{CLIENT_TRACE}-{format(context.span_id, '016x')}-01"
    assert (span.name, span.kind) == ("chat replay-model", SpanKind.SERVER)
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "replay-model"
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert f'"prompt_tokens":{attributes["gen_ai.usage.input_tokens"]},' in usage
    assert f'"completion_tokens":{attributes["gen_ai.usage.output_tokens"]},' in usage
    assert attributes["http.response.status_code"] == 200
    assert [event.name for event in span.events] == ["first_token"]


def test_a_refusal_is_traced_with_its_error_and_an_unsampled_request_is_not_exported(tokenizer: Any) -> None:
    client, tracing, kept = _traced(tokenizer)
    client.post("/v1/chat/completions", json=HELLO | {"model": "made-up"})
    (span,) = _spans(tracing, kept)
    assert (span.name, dict(span.attributes or {})["error.type"]) == ("chat", "model_not_found")
    client, tracing, kept = _traced(tokenizer, sample_ratio=0.0)
    assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
    assert _spans(tracing, kept) == []


def test_hops_are_children_of_their_caller_and_a_queue_wait_a_child_of_its_hop() -> None:
    contextvars.copy_context().run(_hops_and_a_queue_wait)  # a replica sets the current hop once per request task


def _hops_and_a_queue_wait() -> None:
    kept = InMemorySpanExporter()
    tracing = Tracing(TracingOptions(otlp_endpoint="unused"), kept)
    request = tracing.start_request(
        "/v1/chat/completions", [(b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode())]
    )
    stage = tracing.start_hop("ToolParsing", tracing.carrier(request))
    engine = tracing.start_hop("LLMServer:m", tracing.next_hop(stage, None))
    tracing.queue_waited(0.25)
    for span in (engine, stage, request):
        assert span is not None
        span.end()
    assert tracing.start_hop("LLMServer:m", None) is None  # not traced at the ingress: not here either
    by_name = {span.name: span for span in _spans(tracing, kept)}
    assert set(by_name) == {"chat", "ToolParsing", "LLMServer:m", "queue"}
    for child, parent in (("ToolParsing", "chat"), ("LLMServer:m", "ToolParsing"), ("queue", "LLMServer:m")):
        link, context = by_name[child].parent, by_name[parent].context
        assert link is not None and context is not None and link.span_id == context.span_id, child
    assert {format(span.context.trace_id, "032x") for span in by_name.values() if span.context} == {CLIENT_TRACE}
    queue = by_name["queue"]
    assert queue.start_time is not None and queue.end_time is not None
    assert queue.end_time - queue.start_time == 250_000_000
