"""The guards on constrained output (issue #18): the repetition guard pushes a constrained value that repeats
itself to end, and nothing else; the closing pressure pushes an answer near its token cap to close what it has
open. The repetition rule directly (the closing rule's own tests: `tests/unit/test_closing_pressure.py`), then
vLLM's side of both (the logits processor) on the embedded model's vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from serve_app.config import ClosingPressure, RepetitionGuard
from serve_app.engines.base import SamplingOptions
from serve_app.engines.closing_pressure import CLOSING_ARG
from serve_app.engines.repetition_guard import GUARD_ARG, repetition_penalties
from serve_app.engines.vllm_engine import _sampling_params
from serve_app.engines.vllm_output_guards import OutputGuardsProcessor

QUOTE = 9  # a run breaker in the toy vocabulary
TOY_BREAKERS = [False] * 100
TOY_BREAKERS[QUOTE] = True
DEFAULTS = RepetitionGuard()
SETTINGS = (DEFAULTS.multiplier, DEFAULTS.base, DEFAULTS.allowed_length)
CLOSING = (ClosingPressure().start, ClosingPressure().strength)


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
def processor(model_dir: Path) -> OutputGuardsProcessor:
    from vllm.config import ModelConfig, VllmConfig

    config = VllmConfig(model_config=ModelConfig(model=str(model_dir)))
    return OutputGuardsProcessor(config, torch.device("cpu"), False)


def _params(guarded: bool) -> Any:
    from vllm import SamplingParams

    return SamplingParams(extra_args={GUARD_ARG: list(SETTINGS)} if guarded else None)


def _pressed(max_tokens: int) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, extra_args={CLOSING_ARG: list(CLOSING)})


def test_runs_end_at_quotes_escapes_and_newlines(processor: OutputGuardsProcessor, tokenizer: Any) -> None:
    breaks = processor._breaks_run
    for text in ('"', '",', "\\", "\\n", "\n", '":"'):
        assert any(breaks[token] for token in tokenizer.encode(text, add_special_tokens=False)), text
    for text in ("_tags", "3.", "hello world", "src/main.py", ", which"):
        assert not any(breaks[token] for token in tokenizer.encode(text, add_special_tokens=False)), text


def test_only_guarded_rows_are_penalized_and_rows_follow_their_requests(
    processor: OutputGuardsProcessor, tokenizer: Any
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


def test_an_answer_near_its_cap_is_pushed_to_close_what_it_has_open(
    processor: OutputGuardsProcessor, tokenizer: Any
) -> None:
    """Four answers of 40 tokens: inside a string and outside, near a 48-token cap; one right after a backslash;
    one far from its cap. Only the closers of what is open gain, and only near the cap."""

    def first_40(text: str) -> list[int]:
        ids: list[int] = tokenizer.encode(text, add_special_tokens=False)[:40]
        assert len(ids) == 40
        return ids

    in_string = first_40('{"description":"' + " and so on" * 40)
    outside = first_40('{"ids":[' + "1," * 80)
    (backslash,) = tokenizer.encode("\\", add_special_tokens=False)
    escaped = first_40('{"path":"' + " a" * 80)[:39] + [backslash]
    processor.update_state(
        BatchUpdate(
            batch_size=4,
            removed=[],
            added=[
                (0, _pressed(48), [], in_string),
                (1, _pressed(48), [], outside),
                (2, _pressed(48), [], escaped),
                (3, _pressed(400), [], list(in_string)),
            ],
            moved=[],
        )
    )
    logits = processor.apply(torch.zeros(4, len(processor._breaks_run)))
    quote, brace, bracket, word = (tokenizer.encode(t, add_special_tokens=False)[0] for t in ('"', "}", "]", "a"))
    assert logits[0, quote] > 5 and logits[0, brace] == 0 and logits[0, word] == 0
    assert logits[1, bracket] > 5 and logits[1, brace] > 5 and logits[1, quote] == 0
    assert torch.count_nonzero(logits[2]) == 0  # the next quote would be escaped: it closes nothing
    assert torch.count_nonzero(logits[3]) == 0  # a tenth of its budget: the model's own
    processor.update_state(BatchUpdate(batch_size=4, removed=[0, 1, 2, 3], added=[], moved=[]))


def test_constrained_requests_carry_the_guards_and_free_text_does_not() -> None:
    json_answer = SamplingOptions(max_tokens=8, json_schema={"type": "object"})
    assert _sampling_params(json_answer, list(SETTINGS), list(CLOSING)).extra_args == {
        GUARD_ARG: list(SETTINGS),
        CLOSING_ARG: list(CLOSING),
    }
    assert _sampling_params(json_answer, None, None).extra_args is None
    assert _sampling_params(SamplingOptions(max_tokens=8), list(SETTINGS), list(CLOSING)).extra_args is None
    # Under `auto`, a strict tool's structural tag: the answer may be text, which the pressure leaves alone.
    tagged = SamplingOptions(max_tokens=8, structural_tag='{"type": "structural_tag"}')
    assert _sampling_params(tagged, list(SETTINGS), list(CLOSING)).extra_args == {GUARD_ARG: list(SETTINGS)}
