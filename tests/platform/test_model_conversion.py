"""The embedded default's GGUF converts to a checkpoint vLLM loads (the real conversion, half a minute once)."""

from __future__ import annotations

import json
from pathlib import Path


def test_embedded_model_converts_to_a_vllm_loadable_checkpoint(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config  # de-quantized: vLLM loads plain bf16 safetensors
    assert config["max_position_embeddings"] == 8192
    assert (model_dir / "model.safetensors").stat().st_size > 200e6
    assert "<|im_start|>" in (model_dir / "chat_template.jinja").read_text()
