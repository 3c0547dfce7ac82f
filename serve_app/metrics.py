"""The endpoint's own metrics (issue #20): who asked for what, what it cost, how long it took, what failed.

`METRICS` declares them; `RequestMetrics` records each request's when it ends, from what the ingress's
telemetry middleware observed (`serve_app/telemetry.py`), through a `MetricsSink` (the engine replicas
record the queue time). The Serve deployments record through Ray's metrics API
(`deployments/ray_metrics.py`), which exports them on every node's metrics port beside Serve's and vLLM's
own, where Prometheus scrapes them (Ray adds the `ray_` prefix to the names and `_total` to counters).

What a request is measured by, seen from the ingress:
- `time_to_first_token`: from its arrival to the first streamed frame with a token (the role chunk travels
  with the first token, R4.2); streams only;
- `inter_token_latency`: the rest of the stream's time over its remaining tokens, one figure per stream;
- `request_duration`: arrival to the last byte, any request;
- its tokens, from its `UsageReport` (`serve_app/usage.py`); its error code, from the error body or, for a
  stream that failed after it started, from the error event before `[DONE]`.
Queue time is measured where requests wait, in the engine replica (`serve_app/engines/admission.py`).

Pure: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:  # the telemetry middleware hands its observations here
    from serve_app.telemetry import Observation

MetricKind = Literal["counter", "histogram", "gauge"]

# Seconds. Latency buckets reach 5 minutes: an agent's long answers, and clients' own 300 s timeouts.
_WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


REQUESTS = Metric(
    "agent_serve_requests",
    "counter",
    "Requests answered, by key, team, model, route and HTTP status.",
    ("key", "team", "model", "route", "status"),
)
TOKENS = Metric(
    "agent_serve_tokens",
    "counter",
    "Tokens as the answers' usage counts them, by key, team, model and kind (prompt, completion, cached).",
    ("key", "team", "model", "kind"),
)
ERRORS = Metric(
    "agent_serve_errors",
    "counter",
    "Error answers and error events after a stream started, by model, route and OpenAI error code.",
    ("model", "route", "code"),
)
RATE_LIMITED = Metric(
    "agent_serve_rate_limited",
    "counter",
    "Requests refused by a key's or a team's limits, by key, team and the kind of limit (requests, tokens).",
    ("key", "team", "type"),
)
IN_FLIGHT = Metric(
    "agent_serve_requests_in_flight", "gauge", "Requests in this ingress replica now, by route.", ("route",)
)
TIME_TO_FIRST_TOKEN = Metric(
    "agent_serve_time_to_first_token_seconds",
    "histogram",
    "Streams: from the request's arrival to its first token, by model.",
    ("model",),
    _WAIT_BUCKETS,
)
INTER_TOKEN_LATENCY = Metric(
    "agent_serve_inter_token_latency_seconds",
    "histogram",
    "Streams: the time after the first token over the tokens after it, one figure per stream, by model.",
    ("model",),
    _TOKEN_BUCKETS,
)
REQUEST_DURATION = Metric(
    "agent_serve_request_duration_seconds",
    "histogram",
    "From a request's arrival to its answer's last byte, by model and route.",
    ("model", "route"),
    _WAIT_BUCKETS,
)
QUEUE_TIME = Metric(
    "agent_serve_queue_time_seconds",
    "histogram",
    "How long requests waited in an engine replica for room to generate, by model.",
    ("model",),
    _WAIT_BUCKETS,
)
INGRESS_METRICS = (
    REQUESTS,
    TOKENS,
    ERRORS,
    RATE_LIMITED,
    IN_FLIGHT,
    TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    REQUEST_DURATION,
)
ENGINE_METRICS = (QUEUE_TIME,)
METRICS = INGRESS_METRICS + ENGINE_METRICS


class MetricsSink(Protocol):
    """Where recorded values go (Ray's metrics in the deployments)."""

    def count(self, metric: Metric, value: float, labels: dict[str, str]) -> None: ...

    def observe(self, metric: Metric, value: float, labels: dict[str, str]) -> None: ...

    def set(self, metric: Metric, value: float, labels: dict[str, str]) -> None: ...


class RequestMetrics:
    """Records each request's `Observation` (`serve_app/telemetry.py`) when it ends, and the requests in
    flight in this replica."""

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink
        self.in_flight: dict[str, int] = {}

    def started(self, route: str) -> None:
        self._gauge(route, +1)

    def finished(self, seen: Observation) -> None:
        self._gauge(seen.route, -1)
        model, route, usage = seen.model, seen.route, seen.usage
        who = {"key": seen.caller.name, "team": seen.caller.team or ""}
        self.sink.count(REQUESTS, 1, who | {"model": model, "route": route, "status": str(seen.status or 500)})
        self.sink.observe(REQUEST_DURATION, seen.ended - seen.arrived, {"model": model, "route": route})
        if usage is not None:
            for kind, tokens in (
                ("prompt", usage.prompt_tokens),
                ("completion", usage.completion_tokens),
                ("cached", usage.cached_tokens),
            ):
                self.sink.count(TOKENS, tokens, who | {"model": model, "kind": kind})
        if seen.first_token_at is not None:
            self.sink.observe(TIME_TO_FIRST_TOKEN, seen.first_token_at - seen.arrived, {"model": model})
            if usage is not None and usage.completion_tokens > 1:
                per_token = (seen.ended - seen.first_token_at) / (usage.completion_tokens - 1)
                self.sink.observe(INTER_TOKEN_LATENCY, per_token, {"model": model})
        error = seen.error()
        if error is not None:
            code, error_type = error
            self.sink.count(ERRORS, 1, {"model": model, "route": route, "code": code})
            if code == "rate_limit_exceeded":
                self.sink.count(RATE_LIMITED, 1, who | {"type": error_type})

    def _gauge(self, route: str, change: int) -> None:
        self.in_flight[route] = self.in_flight.get(route, 0) + change
        self.sink.set(IN_FLIGHT, self.in_flight[route], {"route": route})
