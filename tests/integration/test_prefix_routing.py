"""Prefix-affinity routing on a live app (issue #22): every turn of a conversation reaches the engine replica
that served its previous turn, as the prefix cache each replica reports shows. Two replicas of the replay
engine: a router picking at random would send each later turn to the other replica half of the time."""

from __future__ import annotations

from typing import Any

import httpx

from serve_app.engines.prefix_cache import BLOCK_TOKENS
from tests.integration.conftest import ROUTED_MODEL
from tests.openai_spec import assert_valid

CONVERSATIONS = 6
TURNS = 3


def _turn(http: httpx.Client, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    response = http.post("/chat/completions", json={"model": ROUTED_MODEL, "messages": messages, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert_valid(body, "CreateChatCompletionResponse")
    return body


def _conversation(http: httpx.Client, task: str, n: int, **fields: Any) -> list[tuple[int, int]]:
    """(prompt tokens, cached tokens) of each turn of conversation `n`, which grows by an exchange per turn
    of its own (so that only the replica that served its previous turn holds its prefix)."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful coding agent. " * 20},
        {"role": "user", "content": f"{task}: " + " ".join(f"file_{n}.py" for n in range(40))},
    ]
    usage = []
    for turn in range(TURNS):
        body = _turn(http, messages, **fields)
        usage.append((body["usage"]["prompt_tokens"], body["usage"]["prompt_tokens_details"]["cached_tokens"]))
        answer = body["choices"][0]["message"]["content"]
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"Conversation {n}, step {turn}."},
        ]
    return usage


def _served_where_the_previous_turn_ran(usage: list[tuple[int, int]]) -> bool:
    """Each later turn found all of its previous turn's prompt cached (its whole blocks but the last)."""
    return all(
        cached >= (previous // BLOCK_TOKENS - 1) * BLOCK_TOKENS
        for (previous, _), (_, cached) in zip(usage, usage[1:], strict=False)
    )


def test_every_turn_of_a_conversation_reaches_the_replica_holding_its_prefix(http: httpx.Client) -> None:
    for n in range(CONVERSATIONS):
        usage = _conversation(http, f"Task {n}", n)
        assert _served_where_the_previous_turn_ran(usage), usage


def test_a_prompt_cache_key_keeps_a_conversation_together(http: httpx.Client) -> None:
    """The key the client names (Codex sends its conversation id) is the conversation."""
    for n in range(CONVERSATIONS):
        usage = _conversation(http, "The same task for everyone", n, prompt_cache_key=f"conversation-{n}")
        assert _served_where_the_previous_turn_ran(usage), usage
