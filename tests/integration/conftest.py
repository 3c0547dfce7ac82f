"""Start the real Serve application once per test session: real vLLM (eager) and the replay engine."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml
from openai import OpenAI

from tests import harmony_fixtures as h
from tests.conftest import EMBEDDED_SOURCE, REPLAY_SCRIPT, ROOT, cuda_gpu_count

VLLM_MODEL = "smollm2-135m-instruct"
REPLAY_MODEL = "smollm2-replay"
# Replay engines emitting reasoning-model output through SmolLM2's tokenizer (R6).
THINK_MODEL = "replay-think"
HARMONY_MODEL = "replay-harmony"
# A replay engine that runs one generation at a time and lets one request wait: admission (issue #17).
NARROW_MODEL = "replay-narrow"
# A replay engine of two replicas behind the prefix-affinity router (issue #22).
ROUTED_MODEL = "replay-routed"
ALL_MODELS = [VLLM_MODEL, REPLAY_MODEL, THINK_MODEL, HARMONY_MODEL, NARROW_MODEL, ROUTED_MODEL]
# all-MiniLM-L6-v2 on vLLM's pooling runner, as configs/multi-model.yaml serves it, with the same alias.
EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_ALIAS = "text-embedding-minilm"
VLLM_ALIAS = "smollm2"
THINK_SCRIPT = ROOT / "tests" / "fixtures" / "think_script.yaml"


def _harmony_script(directory: Path) -> Path:
    """gpt-oss answers rendered by openai-harmony: a tool call for weather questions, else an answer."""
    replies = [
        {
            "when": {"last_message": "(?i)weather"},
            "text": h.completion(
                h.analysis("The user wants the weather in Paris."), h.call("get_weather", '{"city": "Paris"}')
            ),
        },
        {"text": h.completion(h.analysis("A greeting. Reply briefly."), h.final("Hello from gpt-oss!"))},
    ]
    path = directory / "harmony_script.yaml"
    path.write_text(yaml.safe_dump({"token_delay_s": 0.002, "replies": replies}))
    return path


def _shipped_embedding_model(on_gpu: bool) -> dict[str, Any]:
    """The embedding model as the multi-model config ships it (but for its share of the CPUs and GPU)."""
    document = yaml.safe_load((ROOT / "configs" / "multi-model.yaml").read_text())
    models: list[dict[str, Any]] = document["applications"][0]["args"]["models"]
    (model,) = [m for m in models if m["id"] == EMBEDDING_MODEL]
    model["deployment"] |= {"num_cpus": 0.1}  # the session app's other models hold most of CI's 2 CPUs
    if on_gpu:
        model["engine_args"] |= {"gpu_memory_utilization": 0.1}
        model["engine_args"].pop("kv_cache_space_gib", None)
        model["deployment"] |= {"num_gpus": 0.1}
    return model


@dataclass(frozen=True)
class RunningApp:
    base_url: str  # ends with /v1, as OpenAI clients expect
    app_name: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return cast(int, s.getsockname()[1])


@pytest.fixture(scope="session")
def running_app(model_dir: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    import ray
    from ray import serve

    from serve_app import build_app
    from serve_app.ray_settings import CONTROLLER_OPTIONS, prepare_node_environment

    on_gpu = cuda_gpu_count() > 0  # the gpu extra on a GPU machine: vLLM needs a (shared) GPU
    # vLLM's own limit on alternatives per token below OpenAI's 20: a check only vLLM makes (test_bad_input.py).
    engine_args: dict[str, Any] = {"max_model_len": 8192, "enforce_eager": True, "extra": {"max_logprobs": 5}}
    # float32 on CPUs, which compute it alike. bfloat16 runs on different kernels on CPUs with native bf16
    # (AMX, AVX512-BF16) and CPUs that emulate it, and greedy answers differ: asked for the capital of
    # France, SmolLM2 answers "Paris" on an AVX2 EPYC and "L'Étoile, la Marseillaise, ..." on an AMX Xeon
    # (float32 there: "Paris").
    engine_args |= (
        {"dtype": "bfloat16", "gpu_memory_utilization": 0.3}
        if on_gpu
        else {"dtype": "float32", "kv_cache_space_gib": 1}
    )
    args = {
        "models": [
            {
                "id": VLLM_MODEL,
                "aliases": [VLLM_ALIAS],
                "source": EMBEDDED_SOURCE,
                "engine_args": engine_args,
                "deployment": {"num_cpus": 1, "num_gpus": 0.5 if on_gpu else 0},
            },
            {
                "id": REPLAY_MODEL,
                "source": EMBEDDED_SOURCE,
                "engine": "replay",
                "replay": {"script": str(REPLAY_SCRIPT)},
                "deployment": {"num_cpus": 0.5},
            },
            {
                "id": THINK_MODEL,
                "source": EMBEDDED_SOURCE,
                "engine": "replay",
                "reasoning_parser": "think",
                "replay": {"script": str(THINK_SCRIPT)},
                "deployment": {"num_cpus": 0.1},
            },
            {
                "id": HARMONY_MODEL,
                "source": EMBEDDED_SOURCE,
                "engine": "replay",
                "reasoning_parser": "harmony",
                "tool_parser": "harmony",
                "replay": {"script": str(_harmony_script(tmp_path_factory.mktemp("harmony")))},
                "deployment": {"num_cpus": 0.1},
            },
            {
                "id": NARROW_MODEL,
                "source": EMBEDDED_SOURCE,
                "engine": "replay",
                "replay": {"script": str(REPLAY_SCRIPT), "max_model_len": 512},
                "deployment": {"num_cpus": 0.1, "max_ongoing_requests": 1},
                "max_queued_requests": 1,
            },
            {
                "id": ROUTED_MODEL,
                "source": EMBEDDED_SOURCE,
                "engine": "replay",
                "replay": {"script": str(REPLAY_SCRIPT)},
                "deployment": {"num_cpus": 0.05, "num_replicas": 2},
                "routing": {"router": "prefix_affinity"},
            },
            _shipped_embedding_model(on_gpu),
        ],
        # Short enough for tests to see keep-alives and 413s without waiting or sending megabytes.
        "server": {"keep_alive_interval_s": 1.0, "max_request_body_bytes": 1_000_000},
    }
    port = _free_port()
    prepare_node_environment()
    ray.init(namespace="agent-serve-tests")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options=CONTROLLER_OPTIONS)
        serve.run(build_app(args), name="openai", route_prefix="/")
        yield RunningApp(f"http://127.0.0.1:{port}/v1", "openai")
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def client(running_app: RunningApp) -> OpenAI:
    """The official SDK, without retries (a retry would hide the first answer)."""
    return OpenAI(base_url=running_app.base_url, api_key="unused-without-keys", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def http(running_app: RunningApp) -> httpx.Client:
    return httpx.Client(base_url=running_app.base_url, timeout=300)
