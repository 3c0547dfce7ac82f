"""Issue #20's traces over real OTLP: the app, tracing to an OTLP/HTTP receiver run by this test, serves one
streamed tool-calling request that carries a client's W3C `traceparent`. The spans the replicas export
must form the request's path — ingress → `ToolParsing` → the engine replica → its queue — as parent and
child, all in the client's trace, with the GenAI attributes on the request's span."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.distributed.conftest import APP, deploy, replay_model

pytestmark = pytest.mark.distributed

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TOOL_CALL = '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.txt"}}\n</tool_call>'
ARRIVAL_LIMIT_S = 60  # liveness: replicas send their spans every second


class _Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint (protobuf): keeps every span it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Any] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        export = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    self.server.spans.extend(scope.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    assert kind is not None
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind)


def test_a_streamed_tool_call_is_one_trace_across_the_hops_in_the_clients_trace(
    cluster: str, receiver: _Receiver, tmp_path: Path
) -> None:
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump({"token_delay_s": 0.01, "replies": [{"text": TOOL_CALL}]}))
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    deploy(replay_model(script, deployment={"num_cpus": 0.5}), server={"tracing": {"otlp_endpoint": endpoint}})
    try:
        body = {
            "model": "replay",
            "messages": [{"role": "user", "content": "Read a.txt."}],
            "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        answer = httpx.post(
            f"{cluster}/chat/completions",
            json=body,
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
            timeout=60,
        )
        assert answer.status_code == 200 and '"finish_reason":"tool_calls"' in answer.text
        assert answer.headers["traceparent"].startswith(f"00-{CLIENT_TRACE}-")

        names = {"chat replay", "ToolParsing", "LLMServer:replay", "queue"}
        deadline = time.monotonic() + ARRIVAL_LIMIT_S
        while not names <= {span.name for span in receiver.spans}:
            assert time.monotonic() < deadline, f"spans received: {[span.name for span in receiver.spans]}"
            time.sleep(0.5)
        spans = {span.name: span for span in receiver.spans if span.name in names}
        assert {span.trace_id.hex() for span in spans.values()} == {CLIENT_TRACE}
        request = spans["chat replay"]
        assert request.parent_span_id.hex() == CLIENT_SPAN
        assert answer.headers["traceparent"] == f"00-{CLIENT_TRACE}-{request.span_id.hex()}-01"
        for child, parent in (
            ("ToolParsing", "chat replay"),
            ("LLMServer:replay", "ToolParsing"),
            ("queue", "LLMServer:replay"),
        ):
            assert spans[child].parent_span_id == spans[parent].span_id, f"{child} is not a child of {parent}"
        attributes = {a.key: _value(a.value) for a in request.attributes}
        usage = [line for line in answer.text.splitlines() if '"usage":{' in line][-1]
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "replay"
        assert attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)
        assert f'"prompt_tokens":{attributes["gen_ai.usage.input_tokens"]},' in usage
        assert f'"completion_tokens":{attributes["gen_ai.usage.output_tokens"]},' in usage
        assert [event.name for event in request.events] == ["first_token"]
        assert [event.name for event in spans["LLMServer:replay"].events] == ["first_token"]
    finally:
        from ray import serve

        serve.delete(APP)
