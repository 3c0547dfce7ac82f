"""`RayMetrics`: the `MetricsSink` of `serve_app/metrics.py` over Ray Serve's metrics API, which adds each
replica's `deployment`, `replica` and `application` labels and exports through the node's metrics port,
beside Serve's and vLLM's own metrics."""

from __future__ import annotations

from typing import Any, cast

from ray.serve import metrics as serve_metrics

from serve_app.metrics import Metric


class RayMetrics:
    """Made in a replica (Serve's labels need its context): one Ray metric per declared `Metric` it records."""

    def __init__(self, declared: tuple[Metric, ...]) -> None:
        self._metrics: dict[str, Any] = {metric.name: _ray_metric(metric) for metric in declared}

    def count(self, metric: Metric, value: float, labels: dict[str, str]) -> None:
        if value:
            self._metrics[metric.name].inc(value, labels)

    def observe(self, metric: Metric, value: float, labels: dict[str, str]) -> None:
        self._metrics[metric.name].observe(value, labels)

    def set(self, metric: Metric, value: float, labels: dict[str, str]) -> None:
        self._metrics[metric.name].set(value, labels)


def _ray_metric(metric: Metric) -> Any:
    labels = cast(tuple[str], metric.labels)  # Ray types its tag keys as a 1-tuple, meaning any tuple
    if metric.kind == "counter":
        return serve_metrics.Counter(metric.name, metric.description, labels)
    if metric.kind == "gauge":
        return serve_metrics.Gauge(metric.name, metric.description, labels)
    return serve_metrics.Histogram(metric.name, metric.description, list(metric.buckets), labels)
