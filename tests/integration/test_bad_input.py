"""Bad input through the whole stack (issue #17): the table of tests/bad_requests.py sent over HTTP through
HAProxy, the ingress, the post-processing stages and Ray to real vLLM. Every case gets the status OpenAI
gives it, within the client's timeout: never a 5xx, never a 200 whose stream then fails."""

from __future__ import annotations

import httpx
import pytest

from tests.bad_requests import CASES, Case, assert_openais_answer, body_for, with_streamed_variants
from tests.integration.conftest import VLLM_MODEL


@pytest.mark.parametrize("case", with_streamed_variants(CASES), ids=lambda c: c.name)
def test_each_case_gets_openais_answer_through_the_stack(http: httpx.Client, case: Case) -> None:
    headers = {"content-type": "application/json"}
    response = http.post(case.path, content=body_for(case, VLLM_MODEL), headers=headers, timeout=120)
    assert_openais_answer(response, case)


@pytest.mark.parametrize("stream", [False, True])
def test_what_only_vllm_refuses_is_a_400_before_anything_runs(http: httpx.Client, stream: bool) -> None:
    """The session's vLLM engine allows 5 alternatives per token (`max_logprobs`), OpenAI 20: vLLM's own
    check runs when the request is planned, so the refusal is a 400 naming the field, streamed or not."""
    body = {
        "model": VLLM_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "logprobs": True,
        "top_logprobs": 8,
        "stream": stream,
    }
    response = http.post("/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "top_logprobs" and "5" in error["message"]
