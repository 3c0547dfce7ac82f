"""The repetition guard (issue #18): a constrained value that repeats itself is pushed to end, nothing else is
touched. The rule directly, then vLLM's side of it (the logits processor) on the embedded model's vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from serve_app.config import RepetitionGuard
from serve_app.engines.base import SamplingOptions
from serve_app.engines.repetition_guard import GUARD_ARG, repetition_penalties
from serve_app.engines.vllm_engine import _sampling_params
from serve_app.engines.vllm_repetition_guard import RepetitionGuardProcessor

QUOTE = 9  # a run breaker in the toy vocabulary
TOY_BREAKERS = [False] * 100
TOY_BREAKERS[QUOTE] = True
DEFAULTS = RepetitionGuard()
SETTINGS = (DEFAULTS.multiplier, DEFAULTS.base, DEFAULTS.allowed_length)


def _penalties(tokens: list[int]) -> dict[int, float]:
    return repetition_penalties(tokens, TOY_BREAKERS, *SETTINGS)


def test_a_value_looping_is_penalized_more_with_every_repeat() -> None:
    loop = [QUOTE] + [1, 2] * 10  # `"_tags_tags_tags…`: the next `1` would repeat the loop once more
    growing = [_penalties(loop[: 2 + length])[1] for length in range(5, 19, 2)]
    assert growing == sorted(growing) and growing[0] > 0
    assert growing[-1] > 50  # past any logit the model has: the value ends or changes


def test_a_short_echo_is_free() -> None:
    assert _penalties([QUOTE, 5, 6, 7, 1, 5, 6]) == {}  # a two-token repeat, below `allowed_length`
    assert _penalties([QUOTE, 5, 6, 7, 1, 5, 6, 7]) == {1: DEFAULTS.multiplier}  # three: the mildest penalty


def test_copying_another_value_is_free() -> None:
    """An edit's `old` and `new`, a path named twice: the copy is in another run, before a quote."""
    path = [4, 5, 6, 7, 8]
    assert _penalties([QUOTE, *path, QUOTE, QUOTE, *path[:4]]) == {}


def test_ending_the_value_is_never_penalized() -> None:
    tokens = [QUOTE, 1, 2, 1, 2, QUOTE, 1, 2, 1, 2, 1, 2, 1]
    assert QUOTE not in _penalties(tokens)
    assert set(_penalties(tokens)) == {2}


def test_a_placeholder_token_ends_the_run() -> None:
    """vLLM writes -1 for a token not sampled yet under async scheduling."""
    assert _penalties([1, 2, 1, 2, 1, 2, -1, 3]) == {}


@pytest.fixture(scope="module")
def processor(model_dir: Path) -> RepetitionGuardProcessor:
    from vllm.config import ModelConfig, VllmConfig

    config = VllmConfig(model_config=ModelConfig(model=str(model_dir)))
    return RepetitionGuardProcessor(config, torch.device("cpu"), False)


def _params(guarded: bool) -> Any:
    from vllm import SamplingParams

    return SamplingParams(extra_args={GUARD_ARG: list(SETTINGS)} if guarded else None)


def test_runs_end_at_quotes_escapes_and_newlines(processor: RepetitionGuardProcessor, tokenizer: Any) -> None:
    breaks = processor._breaks_run
    for text in ('"', '",', "\\", "\\n", "\n", '":"'):
        assert any(breaks[token] for token in tokenizer.encode(text, add_special_tokens=False)), text
    for text in ("_tags", "3.", "hello world", "src/main.py", ", which"):
        assert not any(breaks[token] for token in tokenizer.encode(text, add_special_tokens=False)), text


def test_only_guarded_rows_are_penalized_and_rows_follow_their_requests(
    processor: RepetitionGuardProcessor, tokenizer: Any
) -> None:
    looping = tokenizer.encode('{"tags":"' + "_tags" * 8, add_special_tokens=False)
    guarded_tokens, plain_tokens = list(looping), list(looping)
    processor.update_state(
        BatchUpdate(
            batch_size=2,
            removed=[],
            added=[(0, _params(True), [], guarded_tokens), (1, _params(False), [], plain_tokens)],
            moved=[],
        )
    )
    logits = processor.apply(torch.zeros(2, len(processor._breaks_run)))
    next_token = tokenizer.encode("_tags", add_special_tokens=False)[0]
    assert logits[0, next_token] < -5 and torch.count_nonzero(logits[1]) == 0
    quote = tokenizer.encode('"', add_special_tokens=False)[0]
    assert logits[0, quote] == 0

    processor.update_state(BatchUpdate(batch_size=2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    logits = processor.apply(torch.zeros(2, len(processor._breaks_run)))
    assert torch.count_nonzero(logits[0]) == 0 and logits[1, next_token] < -5

    processor.update_state(BatchUpdate(batch_size=1, removed=[1], added=[], moved=[]))
    assert torch.count_nonzero(processor.apply(torch.zeros(2, len(processor._breaks_run)))) == 0


def test_constrained_requests_carry_the_guard_and_free_text_does_not() -> None:
    constrained = SamplingOptions(max_tokens=8, json_schema={"type": "object"})
    assert _sampling_params(constrained, list(SETTINGS)).extra_args == {GUARD_ARG: list(SETTINGS)}
    assert _sampling_params(constrained, None).extra_args is None
    assert _sampling_params(SamplingOptions(max_tokens=8), list(SETTINGS)).extra_args is None
