"""Distributed serving on Ray's own multi-node test cluster (`ray.cluster_utils.Cluster`): a head with no
GPUs and two simulated GPU nodes, each its own raylet with its own resources, all on this machine.

The engine here is the replay engine (no GPU needed), which reserves the same placement group a
tensor-parallel vLLM engine would, and reports its queue to the autoscaler the same way.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.distributed.conftest import APP, deploy, replay_model
from tests.sse_client import parse_sse

pytestmark = pytest.mark.distributed

TOKEN_DELAY_S = 0.05
SLOW_TEXT = " ".join(f"word{i}" for i in range(60))  # 170 tokens: 8.5 s
QUICK_TEXT = "Hello from the cluster."


@pytest.fixture(scope="module")
def slow_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scripts") / "slow.yaml"
    replies = [
        # Longer than Ray's default 20 s drain: only our graceful_shutdown_timeout_s lets it finish.
        {"when": {"last_message": "straggle"}, "text": SLOW_TEXT, "first_token_delay_s": 20},
        # Long enough for new replicas to start (~10 s on a busy 2-core machine) while the burst runs.
        {"when": {"last_message": "slow"}, "text": SLOW_TEXT, "first_token_delay_s": 25},
        {"text": QUICK_TEXT},
    ]
    path.write_text(yaml.safe_dump({"token_delay_s": TOKEN_DELAY_S, "replies": replies}))
    return path


def _replicas(*states: str) -> int:
    from ray import serve

    deployment = serve.status().applications[APP].deployments["LLMServer:replay"]
    # ReplicaState is a str enum: its members equal their names.
    return sum(count for state, count in deployment.replica_states.items() if state in states)


def _running_replicas() -> int:
    return _replicas("RUNNING")


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def _engine_placement_groups() -> list[dict[str, Any]]:
    """Placement groups holding GPU bundles, with the node each bundle landed on."""
    import ray

    groups = ray.util.placement_group_table().values()
    return [g for g in groups if g["state"] == "CREATED" and any("GPU" in b for b in g["bundles"].values())]


def _node_accelerators() -> dict[str, str]:
    import ray

    return {
        node["NodeID"]: next(
            (r.split(":", 1)[1] for r in node["Resources"] if r.startswith("accelerator_type:")), "none"
        )
        for node in ray.nodes()
        if node["Alive"]
    }


def _chat(base_url: str, message: str) -> str:
    """The streamed answer's text."""
    body = {"model": "replay", "stream": True, "messages": [{"role": "user", "content": message}]}
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return _content(parse_sse(response.content))


def _content(chunks: list[Any]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if isinstance(c, dict) and c.get("choices")
    )


@pytest.mark.parametrize(
    ("world_size", "strategy", "accelerator", "expected_nodes"),
    [
        (2, "STRICT_SPREAD", None, {"H100", "L4"}),  # one worker per node, as asked
        (4, "PACK", None, {"H100", "L4"}),  # 4 GPUs: no single node has them, so the group spans both
        (2, "PACK", "L4", {"L4"}),  # packed onto one node of the requested accelerator type
    ],
)
def test_engine_placement_group_spans_nodes_when_asked(
    cluster: str, slow_script: Path, world_size: int, strategy: str, accelerator: str | None, expected_nodes: set[str]
) -> None:
    deployment = {"num_cpus": 0.5, "placement_strategy": strategy, "accelerator_type": accelerator}
    deploy(replay_model(slow_script, engine_args={"tensor_parallel_size": world_size}, deployment=deployment))
    try:
        (group,) = _engine_placement_groups()
        accelerators = _node_accelerators()
        bundle_nodes = [accelerators[node] for node in group["bundles_to_node_id"].values()]
        assert len(bundle_nodes) == world_size
        assert set(bundle_nodes) == expected_nodes
        assert group["strategy"] == strategy
        assert _chat(cluster, "Hi") == QUICK_TEXT  # the replica in the group serves
    finally:
        from ray import serve

        serve.delete(APP)
        _wait_for(lambda: not _engine_placement_groups(), 60, "the placement group to be released")


def test_engine_replicas_scale_with_queue_depth_and_back_when_idle(cluster: str, slow_script: Path) -> None:
    """A burst of slow requests: the engine queue (reported by each replica) drives the replica count up;
    with less load it comes back down, and requests still streaming on the replicas being removed
    complete (they drain, for longer than Ray's default 20 s)."""
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 3,
        "target": 2,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 2,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 1,
    }
    deploy(replay_model(slow_script, deployment={"num_cpus": 0.5, "autoscaling": autoscaling}))
    try:
        assert _running_replicas() == 1
        with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
            burst = [pool.submit(_chat, cluster, "slow") for _ in range(8)]
            # 8 queued on one replica, target 2 per replica: the autoscaler asks for its maximum.
            _wait_for(lambda: _replicas("STARTING", "UPDATING", "RUNNING") == 3, 30, "a scale-up decision")
            _wait_for(lambda: _running_replicas() == 3, 60, "the new replicas to run")
            assert not any(f.done() for f in burst), "the burst ended before the replicas ran: make it longer"
            assert all(future.result() == SLOW_TEXT for future in burst)
            # Two long requests, routed to the least busy replicas (so at least one lands on a replica that
            # goes): queue 2, target 2 -> one replica is enough, two of three are removed mid-stream.
            stragglers = [pool.submit(_chat, cluster, "straggle") for _ in range(2)]
            _wait_for(lambda: _replicas("RUNNING") == 1, 60, "the deployment to scale back down to 1 replica")
            assert not any(s.done() for s in stragglers), "a straggler finished before scale-down: nothing proven"
            assert all(s.result() == SLOW_TEXT for s in stragglers)
    finally:
        from ray import serve

        serve.delete(APP)


def test_scale_to_zero_holds_requests_and_keeps_the_stream_alive(cluster: str, slow_script: Path) -> None:
    """min_replicas 0: the idle deployment goes to zero; a request then waits for a replica to start,
    with the response headers and SSE keep-alives sent meanwhile (R4.1, R4.7), and completes."""
    autoscaling = {
        "min_replicas": 0,
        "max_replicas": 1,
        "target": 2,
        "downscale_delay_s": 1,
        "downscale_to_zero_delay_s": 1,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 1,
    }
    deploy(
        replay_model(slow_script, deployment={"num_cpus": 0.5, "autoscaling": autoscaling}),
        server={"keep_alive_interval_s": 0.2},
    )
    try:
        _wait_for(lambda: _running_replicas() == 0, 60, "the deployment to scale to zero")
        listing = httpx.get(f"{cluster}/models", timeout=30)
        assert listing.status_code == 200 and listing.json()["data"][0]["id"] == "replay"
        assert _replicas("STARTING", "RUNNING") == 0, "listing the models woke the engine (R1.5)"
        body = {"model": "replay", "stream": True, "messages": [{"role": "user", "content": "wake up"}]}
        started = time.monotonic()
        with httpx.stream("POST", f"{cluster}/chat/completions", json=body, timeout=120) as response:
            assert response.status_code == 200
            lines = list(response.iter_lines())
        keep_alives = [line for line in lines if line.startswith(":")]
        first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
        assert keep_alives and lines.index(keep_alives[0]) < first_data, "no keep-alive while the replica started"
        chunks = [json.loads(line[5:]) for line in lines if line.startswith("data:") and line != "data: [DONE]"]
        assert _content(chunks) == QUICK_TEXT
        assert [line for line in lines if line.startswith("data:")][-1] == "data: [DONE]"
        assert _running_replicas() == 1, f"scaled up from zero in {time.monotonic() - started:.1f} s"
    finally:
        from ray import serve

        serve.delete(APP)


def test_a_key_limit_is_shared_by_two_ingress_replicas(cluster: str, slow_script: Path, tmp_path: Path) -> None:
    """Issue #20: two ingress replicas lease one key's requests per minute from one ledger: together they
    admit no more than the limit (plus what flowed back in meanwhile), and refuse the rest with OpenAI's 429."""
    from ray import serve

    from serve_app.keys import hash_key

    limit = 40
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys: [{{name: ci, sha256: {hash_key('sk-ci')}, limits: {{requests_per_minute: {limit}}}}}]\n")
    ingress = {"num_replicas": 2, "num_cpus": 0}
    deploy(replay_model(slow_script, deployment={"num_cpus": 0.5}), server={"keys_file": str(keys), "ingress": ingress})
    try:
        body = {"model": "replay", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": "Bearer sk-ci"}

        def ask(_: int) -> httpx.Response:
            return httpx.post(f"{cluster}/chat/completions", json=body, headers=headers, timeout=60)

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(60)))
        flowed_back = (time.monotonic() - started) * limit / 60
        admitted = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code != 200]
        assert all(a.status_code == 429 and a.json()["error"]["code"] == "rate_limit_exceeded" for a in refused)
        assert all(a.headers["x-ratelimit-limit-requests"] == str(limit) for a in answers)
        # No over-admission; at most one batch (5% of the limit) per replica parked where it was not needed.
        assert limit - 2 * (limit // 20) <= len(admitted) <= limit + flowed_back, (len(admitted), flowed_back)
    finally:
        serve.delete(APP)
