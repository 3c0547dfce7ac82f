"""Closing pressure: a constrained answer running out of its token budget is pushed to close what it has open
(issue #18).

A grammar keeps constrained JSON valid, not finished: where it lets a value go on, a small model can go on
writing it (an `email` of ever new digits, a tree ever deeper, a description that rambles) until `max_tokens`
cuts the call or object, and the client gets neither. The repetition guard ends a value that repeats itself;
this ends one that does not know how to end, within the budget the client set:

- once an answer has used `start` of its `max_tokens`, a token that closes what is open gets a logit bonus,
  growing linearly to `strength` at the cap: inside a string, a token that ends it (its first quote comes
  before any backslash); outside strings, a token that begins by closing an object or an array;
- the grammar's mask still decides what may come: a bonus never makes a token possible that the schema
  forbids, so a value the schema says must go on (`minLength`, a required member, an item `minItems` asks
  for) goes on;
- before `start`, nothing changes: an answer well within its budget is the model's own.

It acts only on answers that are JSON from their first token (a forced call, a `response_format`), where
`JsonScan` knows whether a string is open; under `auto`, an answer may be text, and text is the model's.
This module is the rule, pure and tested directly; `vllm_output_guards.py` runs it inside vLLM's sampler.
"""

from __future__ import annotations

from collections.abc import Sequence

CLOSING_ARG = "closing_pressure"
"""`SamplingParams.extra_args` key: `[start, strength]` turns the pressure on for a request."""


def closing_bonus(generated: int, max_tokens: int | None, start: float, strength: float) -> float:
    """The logit bonus of a closing token for an answer that has `generated` tokens of its `max_tokens`."""
    if not max_tokens:
        return 0.0
    used = generated / max_tokens
    if used <= start:
        return 0.0
    return strength * min(1.0, (used - start) / (1.0 - start))


class JsonScan:
    """Where JSON written so far ends: inside a string or not, right after a backslash or not. Fed the text
    of each token as it comes, so each token is read once."""

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False

    def feed(self, text: str) -> None:
        for char in text:
            if self.escaped:
                self.escaped = False
            elif char == "\\" and self.in_string:
                self.escaped = True
            elif char == '"':
                self.in_string = not self.in_string


def closing_tokens(texts: Sequence[str]) -> tuple[list[bool], list[bool]]:
    """For each token's text: whether it ends an open string (a quote, not escaped inside the token), and
    whether, outside strings, it begins by closing an object or an array."""
    ends_string = []
    for text in texts:
        quote, backslash = text.find('"'), text.find("\\")
        ends_string.append(quote >= 0 and not 0 <= backslash < quote)
    closes_container = [text.lstrip()[:1] in ("}", "]") for text in texts]
    return ends_string, closes_container
