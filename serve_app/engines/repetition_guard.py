"""A guard against a value that repeats itself until the token cap cuts the answer (issue #18).

A grammar keeps constrained JSON valid, but where it lets a value go on (a string, an `email`, a number)
a small model can loop inside it — `"_tags_tags_tags…"`, `"3.3.3.3.…"` — until `max_tokens` cuts the
call or object, and the client gets neither. The guard is the "DRY" penalty (don't repeat yourself, as
llama.cpp and text-generation-webui implement it), narrowed to what is safe for an agent's arguments:

- it looks only at the current *run*: the tokens since the last token holding a quote, a backslash or a
  newline. A run is a piece of one value (a string up to its end or its next escape, a number, the
  items of a list of numbers), so copying text from another field or from the prompt (an edit's `old`
  and `new`, a path named twice) is never penalized — only a value repeating itself;
- a token that would extend a repeat of the run's tail by `k + 1` tokens, `k >= allowed_length`, loses
  `multiplier * base ** (k - allowed_length)` from its logit: nothing for a short echo, a wall for a loop;
- a token that ends the run (the closing quote) is never penalized, so ending the value is what the
  penalty makes likely.

This module is the rule, pure and tested directly. It runs inside vLLM's sampler as a logits processor
(`vllm_output_guards.py`), after the grammar's mask, on the requests the engine marks with `GUARD_ARG`
in `SamplingParams.extra_args`: the constrained ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GUARD_ARG = "repetition_guard"
"""`SamplingParams.extra_args` key: `[multiplier, base, allowed_length]` turns the guard on for a request."""

RUN_BREAKERS = ('"', "\\", "\n")
"""Characters that end a run: a token holding one is where a string ends or is escaped (code in a string
is a run per line), or where compact JSON has no place for it but between members."""

MAX_MATCH = 24
"""Repeats are measured up to this many tokens: the penalty is far past any logit by then."""

WINDOW = 384
"""The last tokens of a run looked at: bounds the work per step (a loop is found well within it)."""


def repetition_penalties(
    tokens: Sequence[int], breaks_run: Sequence[bool], multiplier: float, base: float, allowed_length: int
) -> dict[int, float]:
    """The penalty of each next token that would extend a repeat inside the current run.

    `breaks_run[token]` is true for tokens that end a run. For each earlier position of the run whose
    preceding tokens equal the run's last `k` tokens, the token that followed there would make the repeat
    `k + 1` long."""
    end = len(tokens)
    start = end
    while start > max(0, end - WINDOW) and not _breaks(tokens[start - 1], breaks_run):
        start -= 1
    run = tokens[start:end]
    size = len(run)
    if size <= allowed_length:
        return {}
    last = run[-1]
    penalties: dict[int, float] = {}
    for j in range(size - 2, -1, -1):  # j: the end of an earlier copy of the tail
        if run[j] != last:
            continue
        k = 1
        while k < MAX_MATCH and k <= j and run[j - k] == run[size - 1 - k]:
            k += 1
        if k < allowed_length:
            continue
        follower = run[j + 1]
        penalty = multiplier * base ** (k - allowed_length)
        if penalty > penalties.get(follower, 0.0):
            penalties[follower] = penalty
    return penalties


def _breaks(token: int, breaks_run: Sequence[bool]) -> bool:
    # Negative ids are vLLM's placeholders for a token not sampled yet (async scheduling).
    return token < 0 or token >= len(breaks_run) or bool(breaks_run[token])


def token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    """Each token id's text (empty for ids past the tokenizer's vocabulary, padding in the model's)."""
    return [tokenizer.decode([token]) if token < len(tokenizer) else "" for token in range(vocab_size)]


def run_breakers(texts: Sequence[str]) -> list[bool]:
    """For each token's text, whether it holds a run breaker."""
    return [any(char in text for char in RUN_BREAKERS) for text in texts]
