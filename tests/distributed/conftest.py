"""The multi-node cluster every module of this lane runs on: Ray's own test cluster
(`ray.cluster_utils.Cluster`), a head with no GPUs and two simulated GPU nodes, each its own raylet with its
own resources, all on this machine. One per module, started and stopped there: the lane's modules run one
after the other, before any other lane starts its Ray."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from serve_app.ray_settings import CONTROLLER_OPTIONS, prepare_node_environment
from tests.conftest import EMBEDDED_SOURCE

APP = "openai"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return cast(int, s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(model_dir: Path) -> Iterator[str]:
    """Head: CPUs only. gpu-h100 and gpu-l4: 2 (simulated) GPUs each, labelled with their accelerator type."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    prepare_node_environment()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 0, "include_dashboard": False})
    for accelerator in ("H100", "L4"):
        cluster.add_node(num_cpus=2, num_gpus=2, resources={f"accelerator_type:{accelerator}": 1})
    port = free_port()
    ray.init(address=cluster.address, namespace="agent-serve-distributed")
    try:
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": "127.0.0.1", "port": port},
            controller_options=CONTROLLER_OPTIONS,
        )
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def deploy(*models: dict[str, Any], server: dict[str, Any] | None = None) -> None:
    from ray import serve

    from serve_app import build_app

    serve.run(build_app({"models": list(models), "server": server or {}}), name=APP, route_prefix="/")


def replay_model(script: Path, **fields: Any) -> dict[str, Any]:
    return {"id": "replay", "source": EMBEDDED_SOURCE, "engine": "replay", "replay": {"script": str(script)}} | fields
