"""What travels with a request from the ingress to its engine besides its body: plain data across Ray."""

from __future__ import annotations

from dataclasses import dataclass

TraceCarrier = dict[str, str]
"""The W3C trace context (`traceparent`, `tracestate`) of the span a hop continues (`serve_app/tracing.py`)."""


@dataclass(frozen=True)
class RequestContext:
    caller: str = "anonymous"
    """The key's name: whose share of a busy engine the request takes (`serve_app/engines/admission.py`)."""
    priority: int = 0
    """The key's priority: lower goes first when the engine is busy."""
    trace: TraceCarrier | None = None
    """The span the next hop continues, when the request is traced."""


NO_CONTEXT = RequestContext()
"""A request's context where none came with it (called without the ingress: tests, benchmarks)."""
