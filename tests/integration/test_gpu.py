"""GPU path: the engine deployment with tensor parallelism in a placement group. Skips without CUDA GPUs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import EMBEDDED_SOURCE, cuda_gpu_count
from tests.integration.conftest import RunningApp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(cuda_gpu_count() < 1, reason="needs a CUDA GPU and the gpu extra (vLLM with CUDA)"),
]


def test_gpu_engine_serves_with_tensor_parallelism(running_app: RunningApp) -> None:
    """An engine deployment on GPUs answers through the app: TP 2 in a placement group when two whole GPUs
    are free (the session's CPU-config model holds half of the first), else one shared GPU."""
    from openai import OpenAI
    from ray import serve

    from serve_app import build_app

    tensor_parallel = 2 if cuda_gpu_count() >= 3 else 1
    args: dict[str, Any] = {
        "models": [
            {
                "id": "smollm2-gpu",
                "source": EMBEDDED_SOURCE,
                "engine_args": {
                    "max_model_len": 4096,
                    "dtype": "bfloat16",
                    "tensor_parallel_size": tensor_parallel,
                    "gpu_memory_utilization": 0.3,
                },
                "deployment": {"num_cpus": 1, "num_gpus": 0 if tensor_parallel > 1 else 0.5},
            }
        ]
    }
    serve.run(build_app(args), name="gpu", route_prefix="/gpu")
    try:
        client = OpenAI(base_url=running_app.base_url.replace("/v1", "/gpu/v1"), api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="smollm2-gpu",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=20,
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None
        assert reply.usage.completion_tokens > 0
    finally:
        serve.delete("gpu")
