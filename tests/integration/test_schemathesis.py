"""Schemathesis on the running app: requests generated from OpenAI's OpenAPI spec for the five endpoints,
every answer checked against the spec (R5: never a 5xx, never a hung connection; R3.6: only OpenAI's
fields; 4xx: the error envelope). What the spec is adapted for, and which checks run: tests/schemathesis_run.py.

The replay model takes most cases (fast, deterministic); real vLLM a handful with short answers (its
own request checks are the point); embeddings go to the shipped embedding model. The numbers (cases,
operations, status counts, server errors) are printed to the terminal, captured output or not.
"""

from __future__ import annotations

import pytest
from schemathesis import GenerationMode

from tests.integration.conftest import EMBEDDING_MODEL, REPLAY_MODEL, VLLM_MODEL, RunningApp
from tests.schemathesis_run import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    GENERATION_OPERATIONS,
    LIST_MODELS,
    RETRIEVE_MODEL,
    Summary,
    run,
)

pytestmark = pytest.mark.integration

REPLAY_EXAMPLES = 100  # per operation and mode (positive, negative)
OTHER_EXAMPLES = 40
VLLM_EXAMPLES = 5  # positive only, at most 8 tokens and one choice each
TIMEOUT_S = 60.0


def test_requests_generated_from_openais_spec_get_spec_valid_answers(
    running_app: RunningApp, capsys: pytest.CaptureFixture[str]
) -> None:
    base = running_app.base_url
    # The replay engine plays its script whatever `response_format` says: those answers are the 500
    # response_format_violation R7.1 asks for, counted instead of failed (tests/schemathesis_run.py).
    replay = run(
        base,
        REPLAY_MODEL,
        EMBEDDING_MODEL,
        operations=GENERATION_OPERATIONS,
        max_examples=REPLAY_EXAMPLES,
        timeout_s=TIMEOUT_S,
        follows_grammar=False,
    )
    others = run(
        base,
        REPLAY_MODEL,
        EMBEDDING_MODEL,
        operations=(EMBEDDINGS, LIST_MODELS, RETRIEVE_MODEL),
        max_examples=OTHER_EXAMPLES,
        timeout_s=TIMEOUT_S,
        run_seed=replay.seed,
    )
    vllm = run(
        base,
        VLLM_MODEL,
        EMBEDDING_MODEL,
        operations=(CHAT, COMPLETIONS),
        modes=(GenerationMode.POSITIVE,),
        max_examples=VLLM_EXAMPLES,
        max_tokens=8,
        timeout_s=TIMEOUT_S,
        run_seed=replay.seed,
    )
    summary: Summary = replay + others + vllm
    with capsys.disabled():  # the numbers, in every run's log (not only with -s)
        print(f"\n[replay model: {replay.total} cases; vLLM: {vllm.total} cases]\n{summary.report()}")
    assert summary.statuses, "no answers at all"
    assert any(key.startswith("POST /chat/completions 200") for key in replay.statuses), replay.report()
    assert replay.streamed > 0, "no streamed request was generated"
    summary.assert_ok()
