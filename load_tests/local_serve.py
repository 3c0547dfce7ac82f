"""Ray and Serve on this machine for a benchmark: what every script of `load_tests/` starts the same way."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import yaml

from serve_app.ray_settings import CONTROLLER_OPTIONS, prepare_node_environment

LOCAL_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "local.yaml"


def embedded_model(**engine_args: Any) -> dict[str, Any]:
    """The embedded default's model entry as `configs/local.yaml` serves it, these `engine_args` changed."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    [model] = config["applications"][0]["args"]["models"]
    model["engine_args"] |= engine_args
    return dict(model)


@contextmanager
def local_serve(namespace: str) -> Iterator[int]:
    """A local Ray (its logs kept from the terminal) and Serve, HTTP on a free port, which it yields; both
    shut down after."""
    import ray
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = cast(int, s.getsockname()[1])
    prepare_node_environment()
    ray.init(namespace=namespace, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options=CONTROLLER_OPTIONS)
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()
