"""Sampling fields -> engine options (R2.1, R2.4)."""

from __future__ import annotations

from serve_app.engines.base import SamplingOptions
from serve_app.generation import sampling_options
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError

VOCAB = 1000


def _request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_r2_4_cap_beyond_the_context_is_clamped() -> None:
    options = sampling_options(_request(max_tokens=500), 500, room=100, logprobs=None, vocab_size=VOCAB)
    assert isinstance(options, SamplingOptions) and options.max_tokens == 100


def test_r2_1_min_tokens_beyond_what_may_be_generated_is_a_400() -> None:
    error = sampling_options(_request(min_tokens=20), 16, room=100, logprobs=None, vocab_size=VOCAB)
    assert isinstance(error, OpenAIError) and error.param == "min_tokens"


def test_openais_greedy_forms_map_to_what_vllm_takes() -> None:
    """`top_p: 0` is greedy; `n > 1` at temperature 0 is n greedy choices (vLLM refuses both as given)."""
    top_p_zero = sampling_options(_request(top_p=0), 8, room=100, logprobs=None, vocab_size=VOCAB)
    assert isinstance(top_p_zero, SamplingOptions) and (top_p_zero.temperature, top_p_zero.top_p) == (0.0, None)
    n_greedy = sampling_options(_request(n=3, temperature=0), 8, room=100, logprobs=None, vocab_size=VOCAB)
    assert isinstance(n_greedy, SamplingOptions) and (n_greedy.n, n_greedy.temperature, n_greedy.top_k) == (3, 1.0, 1)
