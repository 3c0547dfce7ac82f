"""OpenTelemetry traces (issue #20): one trace per request, a span per hop — the ingress, the
post-processing stage (`ToolParsing` or `StructuredOutput`) when the request takes one, the model's engine
replica, and its wait there for room to generate — exported over OTLP/HTTP. Off unless
`server.tracing.otlp_endpoint` is set.

The ingress continues the client's trace when it sends a W3C `traceparent` (and follows its sampling
decision), and returns its own span's `traceparent` to the client. Between deployments the trace context
travels as plain data: a `TraceCarrier`, the W3C headers as a dict. Attributes follow OpenTelemetry's
GenAI semantic conventions (`gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.usage.input_tokens`,
`gen_ai.usage.output_tokens`, `gen_ai.response.finish_reasons`).

Each process (replica) has its own `Tracing`, with its own tracer provider: the global one is left to vLLM.

Pure: no Ray.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serve_app.config import TracingOptions
from serve_app.request_context import TraceCarrier

if TYPE_CHECKING:  # the telemetry middleware hands its observations here
    from serve_app.telemetry import Observation

SERVICE_NAME = "agent-serve"
# The GenAI conventions' operation names, by API path.
OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/embeddings": "embeddings"}
# How often spans are sent: soon enough to find a request's trace while it is fresh.
EXPORT_DELAY_MS = 1000

_W3C_HEADERS = (b"traceparent", b"tracestate")
_hop: ContextVar[Span | None] = ContextVar("agent_serve_hop", default=None)


class Tracing:
    def __init__(self, options: TracingOptions, exporter: SpanExporter | None = None) -> None:
        """Spans go to `exporter`, or over OTLP/HTTP to `options.otlp_endpoint`."""
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=options.otlp_endpoint)
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": SERVICE_NAME}),
            sampler=ParentBased(TraceIdRatioBased(options.sample_ratio)),
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
        self._tracer = self._provider.get_tracer(SERVICE_NAME)
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def of(cls, options: TracingOptions) -> Tracing | None:
        return None if options.otlp_endpoint is None else cls(options)

    def start_request(self, route: str, headers: list[tuple[bytes, bytes]]) -> Span:
        """The ingress's span of a request, continuing the client's trace if its headers carry one."""
        client = {name.decode(): value.decode("latin-1") for name, value in headers if name in _W3C_HEADERS}
        operation = OPERATIONS.get(route, route)
        attributes = {"gen_ai.operation.name": operation, "http.request.method": "POST", "http.route": route}
        return self._tracer.start_span(operation, self._context(client), SpanKind.SERVER, attributes)

    def end_request(self, span: Span, seen: Observation) -> None:
        if seen.model:
            span.update_name(f"{OPERATIONS.get(seen.route, seen.route)} {seen.model}")
            span.set_attribute("gen_ai.request.model", seen.model)
        status = seen.status or 500  # no answer started here: the app's error handler answered 500 outside
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("agent_serve.key", seen.caller.name)
        if seen.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", seen.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", seen.usage.completion_tokens)
        if seen.finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", seen.finish_reasons)
        if seen.first_token_at is not None:
            span.add_event("first_token", timestamp=_wall_ns(seen.first_token_at))
        if (error := seen.error()) is not None:
            span.set_attribute("error.type", error[0])
            if status >= 500 or status < 400:  # ours, or a stream that failed after it started
                span.set_status(Status(StatusCode.ERROR, error[0]))
        elif status >= 500:
            span.set_status(Status(StatusCode.ERROR, str(status)))
        span.end()

    def start_hop(self, name: str, carrier: TraceCarrier | None, **attributes: Any) -> Span | None:
        """A deployment's span of a request the ingress traced (None when it did not), current for what the
        hop does in this task (`queue_waited`)."""
        if not carrier:
            return None
        span = self._tracer.start_span(name, self._context(carrier), SpanKind.SERVER, attributes)
        _hop.set(span)
        return span

    def next_hop(self, span: Span | None, trace: TraceCarrier | None) -> TraceCarrier | None:
        """What the hop after this one continues: this hop's span, or (not traced here) what came in."""
        return trace if span is None else self.carrier(span)

    def queue_waited(self, seconds: float) -> None:
        """The current hop's request waited this long for room in the engine: a child span, ending now."""
        hop = _hop.get()
        if hop is None:
            return
        now = time.time_ns()
        wait = self._tracer.start_span(
            "queue", set_span_in_context(hop), SpanKind.INTERNAL, start_time=now - int(seconds * 1e9)
        )
        wait.end(end_time=now)

    def carrier(self, span: Span) -> TraceCarrier:
        carrier: TraceCarrier = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        return carrier

    def shutdown(self) -> None:
        """Sends what is left (a replica going away)."""
        self._provider.shutdown()

    def _context(self, carrier: TraceCarrier) -> Context:
        return self._propagator.extract(carrier)


def _wall_ns(monotonic_s: float) -> int:
    """A moment on the monotonic clock (what the observations use) as OpenTelemetry's wall-clock time."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)
