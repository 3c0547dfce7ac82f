"""Issue #20's metrics through a real Prometheus (Debian's package; `make test` installs it): it scrapes the
metrics port of every node of the test cluster while two keys send traffic to two ingress replicas, and
its HTTP API must count per key what the clients counted themselves. Then every PromQL expression of the
Grafana dashboard (`k8s/grafana/agent-serve-dashboard.json`) must return data from it."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve_app.keys import hash_key
from tests.conftest import EMBEDDED_SOURCE, ROOT
from tests.distributed.conftest import APP, deploy, free_port, replay_model

pytestmark = pytest.mark.distributed

DASHBOARD = ROOT / "k8s" / "grafana" / "agent-serve-dashboard.json"
SCRAPE_INTERVAL_S = 1
# Liveness, not speed: Ray's agents export every few seconds, Prometheus scrapes every second.
SETTLE_LIMIT_S = 120
# What the dashboard's Grafana variables stand for when its queries are sent to Prometheus directly.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h"}
VLLM_MODEL = "vllm-metrics"


@pytest.fixture(scope="module")
def prometheus(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import ray

    binary = shutil.which("prometheus")
    assert binary is not None, "Prometheus is not installed: `make test` installs Debian's package"
    targets = [f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}" for node in ray.nodes() if node["Alive"]]
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": targets}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: _ready(f"http://{address}"), 60, "Prometheus to start")
        yield f"http://{address}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(1)


def _query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=10).json()
    assert answer["status"] == "success", (expression, answer)
    return list(answer["data"]["result"])


def _has_data(prometheus: str, expression: str) -> bool:
    return bool(_query(prometheus, expression))


def _by(prometheus: str, expression: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(s["metric"].get(label, "") for label in labels): float(s["value"][1])
        for s in _query(prometheus, expression)
    }


def _settles(prometheus: str, expression: str, labels: tuple[str, ...], expected: dict[tuple[str, ...], float]) -> None:
    """Waits until Prometheus's answer to `expression`, by `labels`, is `expected` (Ray's agents export every
    few seconds, and one request's metrics may reach it in two exports)."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    while (seen := _by(prometheus, expression, *labels)) != expected:
        assert time.monotonic() < deadline, f"{expression}: Prometheus has {seen}, the clients counted {expected}"
        time.sleep(1)


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable, value in GRAFANA_VARIABLES.items():
        expressions = [expression.replace(variable, value) for expression in expressions]
    return expressions


def test_prometheus_counts_each_keys_requests_and_tokens_and_the_dashboard_has_data(
    cluster: str, prometheus: str, tmp_path: Path
) -> None:
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump({"token_delay_s": 0.01, "replies": [{"text": "Counted, every token."}]}))
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "teams: {core: {}}\n"
        "keys:\n"
        f"  - {{name: alice, team: core, sha256: {hash_key('sk-alice')}}}\n"
        f"  - {{name: bob, sha256: {hash_key('sk-bob')}, limits: {{requests_per_minute: 4}}}}\n"
    )
    vllm = {
        "id": VLLM_MODEL,
        "source": EMBEDDED_SOURCE,
        "engine_args": {
            "max_model_len": 1024,
            "dtype": "float32",
            "enforce_eager": True,
            "kv_cache_space_gib": 1,
            "ray_metrics": True,  # vLLM's engine metrics (the dashboard's KV cache panel)
        },
        "deployment": {"num_cpus": 1},
    }
    deploy(
        replay_model(script, deployment={"num_cpus": 0.5}),
        vllm,
        server={"keys_file": str(keys), "ingress": {"num_replicas": 2, "num_cpus": 0}},
    )
    try:
        sent: Counter[tuple[str, str]] = Counter()  # (key, status)
        tokens: Counter[tuple[str, str]] = Counter()  # (key, kind)

        def ask(key: str, model: str = "replay", stream: bool = False) -> None:
            body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            if stream:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            answer = httpx.post(
                f"{cluster}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
            )
            name = key.removeprefix("sk-") if key in ("sk-alice", "sk-bob") else "anonymous"
            sent[(name, str(answer.status_code))] += 1
            if answer.status_code == 200:
                usage = (
                    [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")][-1]
                    if stream
                    else answer.json()
                )["usage"]
                tokens[(name, "prompt")] += usage["prompt_tokens"]
                tokens[(name, "completion")] += usage["completion_tokens"]
                if cached := usage["prompt_tokens_details"]["cached_tokens"]:  # Ray exports no series of zeros
                    tokens[(name, "cached")] += cached

        for _ in range(3):
            ask("sk-alice")
            ask("sk-alice", stream=True)
        ask("sk-alice", VLLM_MODEL, stream=True)
        for _ in range(5):  # the fifth is over bob's 4 a minute
            ask("sk-bob")
        ask("sk-nobody")
        assert sent == {("alice", "200"): 7, ("bob", "200"): 4, ("bob", "429"): 1, ("anonymous", "401"): 1}

        counted: dict[tuple[str, ...], float] = {k: float(v) for k, v in tokens.items()}
        expected: list[tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]] = [
            (
                f'sum by (key, status) (ray_agent_serve_requests_total{{application="{APP}"}})',
                ("key", "status"),
                {k: float(v) for k, v in sent.items()},
            ),
            ("sum by (key, kind) (ray_agent_serve_tokens_total)", ("key", "kind"), counted),
            ("sum by (key, type) (ray_agent_serve_rate_limited_total)", ("key", "type"), {("bob", "requests"): 1.0}),
            (
                "sum by (code) (ray_agent_serve_errors_total)",
                ("code",),
                {("rate_limit_exceeded",): 1.0, ("invalid_api_key",): 1.0},
            ),
            (
                "sum by (model) (ray_agent_serve_time_to_first_token_seconds_count)",
                ("model",),
                {("replay",): 3.0, (VLLM_MODEL,): 1.0},
            ),
        ]
        for expression, labels, values in expected:
            _settles(prometheus, expression, labels, values)

        # The dashboard: each panel's query returns data (vLLM's gauges included, once the engine reported).
        for expression in _dashboard_expressions():
            _wait_for(functools.partial(_has_data, prometheus, expression), SETTLE_LIMIT_S, f"data for {expression}")
    finally:
        from ray import serve

        serve.delete(APP)
