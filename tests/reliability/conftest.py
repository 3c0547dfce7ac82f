"""Faults injected for real (issue #19) into an app of this package's own: a replay engine wherever what is
tested is the serving stack's handling of the fault, and the embedded model on real vLLM for the faults of
vLLM's own processes. The app runs in a Ray of its own, started before and stopped after these tests (they
run after the distributed ones, before the session's app)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tests.conftest import EMBEDDED_SOURCE

APP = "faults"
SLOW_MODEL = "replay-slow"
# A replay model that holds a crowd: 64 generations at once, the rest of a thousand waiting in its replica.
CROWD_MODEL = "replay-crowd"
CROWD = 1000
# Each of the crowd's answers takes this long to start: ~16 waves of 64, ~30 s in all.
CROWD_DELAY_S = 2.0
# The embedded model on real vLLM: for the faults of vLLM's own processes.
VLLM_MODEL = "vllm-faults"
# `StructuredOutput` takes this many requests at once and lets 2 more wait: a burst beyond is shed.
STAGE_ONGOING = 8
# Its hung-engine deadline: far above a step of the small model, short enough for a test.
STALL_TIMEOUT_S = 10.0
TOKEN_DELAY_S = 0.03
# ~300 tokens, ~9 s: long enough to be killed in the middle.
LONG_TEXT = " ".join(f"word{i}" for i in range(100))
TOOL_TEXT = LONG_TEXT + '\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.txt"}}\n</tool_call>'
JSON_TEXT = '{"words": "' + LONG_TEXT + '"}'
# ~5,000 tokens, ~150 s: longer than HAProxy's default drain window on a reload (120 s).
VERY_LONG_TEXT = " ".join(f"word{i}" for i in range(1700))
# An answer whose first token takes a minute: for a client that gives up before it.
PONDERING_DELAY_S = 60.0


@dataclass(frozen=True)
class FaultApp:
    base_url: str  # ends with /v1
    args: dict[str, Any]  # the application's arguments, for a test that redeploys it changed

    def deploy(self, args: dict[str, Any]) -> None:
        """`serve deploy` of changed arguments, as an operator would: returns once the new version runs."""
        from ray import serve

        from serve_app import build_app

        serve.run(build_app(args), name=APP, route_prefix="/")


def kill_replica(deployment: str) -> None:
    """`ray.kill` of the application's one replica of `deployment`, as a crash would end it: no restart of
    that actor, Serve's controller notices and starts a replacement."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def engine_in_flight(model: str) -> int:
    """Generations the model's engine replica runs or holds, as it reports them to the autoscaler."""
    from ray import serve

    from serve_app.autoscaling import ENGINE_QUEUE_METRIC

    engine = serve.get_deployment_handle(f"LLMServer:{model}", app_name=APP)
    return int(engine.record_autoscaling_stats.remote().result()[ENGINE_QUEUE_METRIC])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return cast(int, s.getsockname()[1])


def _script(directory: Path) -> Path:
    replies: list[dict[str, Any]] = [
        {"when": {"last_message": "(?i)a very long story"}, "text": VERY_LONG_TEXT},
        {"when": {"last_message": "(?i)use the tool"}, "text": TOOL_TEXT},
        {"when": {"last_message": "(?i)as json"}, "text": JSON_TEXT},
        {"when": {"last_message": "(?i)one of many"}, "text": "ok", "first_token_delay_s": CROWD_DELAY_S},
        {"when": {"last_message": "(?i)take your time"}, "text": "done", "first_token_delay_s": PONDERING_DELAY_S},
        {"text": LONG_TEXT},
    ]
    path = directory / "slow_script.yaml"
    path.write_text(yaml.safe_dump({"token_delay_s": TOKEN_DELAY_S, "replies": replies}))
    return path


@pytest.fixture(scope="package")
def fault_app(model_dir: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultApp]:
    import ray
    from ray import serve

    from serve_app import build_app
    from serve_app.ray_settings import CONTROLLER_OPTIONS, prepare_node_environment

    script = _script(tmp_path_factory.mktemp("faults"))
    args = {
        "models": [
            {
                "id": SLOW_MODEL,
                "source": EMBEDDED_SOURCE,
                "engine": "replay",
                "replay": {"script": str(script)},
                "deployment": {"num_cpus": 0.1},
            },
            {
                "id": CROWD_MODEL,
                "source": EMBEDDED_SOURCE,
                "engine": "replay",
                "replay": {"script": str(script)},
                "max_queued_requests": CROWD,
                "deployment": {"num_cpus": 0.1},
            },
            {
                "id": VLLM_MODEL,
                "source": EMBEDDED_SOURCE,
                "engine_args": {
                    "max_model_len": 2048,
                    "dtype": "float32",
                    "enforce_eager": True,
                    "kv_cache_space_gib": 1,
                    "stall_timeout_s": STALL_TIMEOUT_S,
                },
                "deployment": {"num_cpus": 1},
            },
        ],
        "server": {
            "keep_alive_interval_s": 1.0,
            "structured_output": {"num_cpus": 0, "max_ongoing_requests": STAGE_ONGOING, "max_queued_requests": 2},
        },
    }
    port = _free_port()
    prepare_node_environment()
    ray.init(namespace="agent-serve-faults")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options=CONTROLLER_OPTIONS)
        serve.run(build_app(args), name=APP, route_prefix="/")
        yield FaultApp(f"http://127.0.0.1:{port}/v1", args)
    finally:
        serve.shutdown()
        ray.shutdown()
