"""Engine options -> vLLM's own SamplingParams (R2.1): the extensions reach vLLM, the rest keep its defaults;
the engine's dtype as vLLM gets it."""

from __future__ import annotations

from pathlib import Path

from serve_app.config import VLLMEngineArgs
from serve_app.engines.base import SamplingOptions
from serve_app.engines.cpu_dtype import fastest_cpu_dtype, read_cpu_flags
from serve_app.engines.vllm_engine import VLLMEngine, _sampling_params
from serve_app.generation import sampling_options
from serve_app.protocol.chat import ChatCompletionRequest

VOCAB = 1000


def _request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_r2_1_vllm_extensions_reach_vllms_sampling_params() -> None:
    request = _request(top_k=5, min_p=0.1, repetition_penalty=1.3, min_tokens=4, ignore_eos=True, temperature=0.7)
    options = sampling_options(request, 16, room=100, logprobs=None, vocab_size=VOCAB)
    assert isinstance(options, SamplingOptions)
    params = _sampling_params(options, None, None)
    assert (params.top_k, params.min_p, params.repetition_penalty) == (5, 0.1, 1.3)
    assert (params.min_tokens, params.ignore_eos, params.max_tokens) == (4, True, 16)


def test_r2_1_without_extensions_vllm_keeps_its_defaults() -> None:
    options = sampling_options(_request(), None, room=100, logprobs=None, vocab_size=VOCAB)
    assert isinstance(options, SamplingOptions)
    params = _sampling_params(options, None, None)
    assert (params.top_k, params.min_p, params.repetition_penalty, params.min_tokens, params.ignore_eos) == (
        0,
        0.0,
        1.0,
        0,
        False,
    )


def test_openais_greedy_forms_are_accepted_by_vllm() -> None:
    """vLLM itself refuses `top_p: 0` and greedy `n > 1`; what we map them to, it accepts."""
    for fields in ({"top_p": 0}, {"n": 2, "temperature": 0}, {"n": 2, "top_p": 0}):
        options = sampling_options(_request(**fields), 8, room=100, logprobs=None, vocab_size=VOCAB)
        assert isinstance(options, SamplingOptions)
        _sampling_params(options, None, None)  # raises vLLM's own validation error if it refuses them


def test_auto_dtype_on_this_cpu_is_the_fastest_here_and_a_named_dtype_is_kept(tmp_path: Path) -> None:
    """Issue #22: vLLM gets bfloat16 only on a CPU that computes it natively (vLLM itself would take the
    model's bfloat16 on any CPU); a dtype the config names is passed as is."""
    from vllm.platforms import current_platform

    def dtype(configured: str) -> object:
        args = VLLMEngineArgs.model_validate({"dtype": configured})
        return VLLMEngine(tmp_path, args, "m").engine_args()["dtype"]

    expected = fastest_cpu_dtype(read_cpu_flags())[0] if current_platform.is_cpu() else "auto"
    assert dtype("auto") == expected
    assert dtype("bfloat16") == "bfloat16"


def test_the_engine_arguments_of_the_configs_fields_are_vllms(tmp_path: Path) -> None:
    """The engine arguments the config has fields for reach vLLM under vLLM's own names (a renamed one would
    fail only when an engine starts)."""
    import dataclasses

    from vllm import AsyncEngineArgs

    every = {
        "max_model_len": 4096,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 512,
        "long_prefill_token_threshold": 256,
        "gpu_memory_utilization": 0.8,
    }
    kwargs = VLLMEngine(tmp_path, VLLMEngineArgs.model_validate(every), "m").engine_args()
    assert set(every) <= set(kwargs)
    assert set(kwargs) <= {field.name for field in dataclasses.fields(AsyncEngineArgs)}
