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
