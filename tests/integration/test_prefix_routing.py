"""Prefix-affinity routing on a live app (issue #22): every turn of a conversation reaches the engine replica
that served its previous turn, as the prefix cache each replica reports shows. Two replicas of the replay
engine: a router picking at random would send each later turn to the other replica half of the time."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

from serve_app.engines.prefix_cache import BLOCK_TOKENS
from serve_app.prefix_routing import HELD_KEYS_REPORT_PERIOD_S, HELD_KEYS_STAT, affinity_key, ranking
from serve_app.protocol.chat import ChatCompletionRequest
from tests.integration.conftest import ROUTED_MODEL, RunningApp
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


def _held_keys(app_name: str) -> dict[str, dict[bytes, int]]:
    """What each engine replica reports holding (its routing stats: each prefix's key and size), by the
    replica's id."""
    import ray

    deployment = f"{app_name}#LLMServer:{ROUTED_MODEL}#"
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)]
    replicas = {name.rsplit("#", 1)[1]: ray.get_actor(name, namespace="serve") for name in names if deployment in name}
    stats: list[dict[str, Any]] = ray.get([replica.record_routing_stats.remote() for replica in replicas.values()])
    return {replica: reported[HELD_KEYS_STAT] for replica, reported in zip(replicas, stats, strict=True)}


def _opening_ranking_first(replica: str, replicas: list[str], task: str) -> list[dict[str, Any]]:
    """A conversation opening whose key ranks `replica` first (where a new conversation goes on equal queues)."""
    for variant in range(100):
        messages = [
            {"role": "system", "content": f"You are coding agent number {variant}."},
            {"role": "user", "content": task},
        ]
        key = affinity_key(ChatCompletionRequest.model_validate({"model": ROUTED_MODEL, "messages": messages}))
        assert key is not None
        if ranking(key, replicas)[0] == replica:
            return messages
    raise AssertionError("no opening ranks this replica first")


def test_a_router_that_never_placed_a_conversation_follows_the_engines_reports(
    http: httpx.Client, running_app: RunningApp
) -> None:
    """The ingress places a new conversation on the replica with the shorter queue, here the one its key does
    not rank first (that one is busy). A router that never saw the conversation (this process's own handle:
    another ingress replica, or the ingress restarted) sends its next turn there too, because the engines
    report the prefixes they hold; going by the key's ranking it would miss the cached prefix."""
    from ray import serve

    busy, other = sorted(_held_keys(running_app.app_name))
    replicas = [busy, other]
    slow = _opening_ranking_first(busy, replicas, "Think slowly about it.")  # its answer takes 4 s to start
    slow_turn = threading.Thread(target=_turn, args=(http, slow))
    slow_turn.start()
    time.sleep(1.0)  # routed by now: `busy` has the longer queue while it waits
    conversation = _opening_ranking_first(busy, replicas, "Fix the failing test: " + " ".join(["file.py"] * 40))
    first = _turn(http, conversation)
    slow_turn.join()
    key = affinity_key(ChatCompletionRequest.model_validate({"model": ROUTED_MODEL, "messages": conversation}))
    held = _held_keys(running_app.app_name)
    assert key in held[other] and key not in held[busy], "the first turn went to the shorter queue"
    # Serve asks each replica for its report every period, and broadcasts what changed to every router.
    time.sleep(2.5 * HELD_KEYS_REPORT_PERIOD_S)
    engine = serve.get_deployment_handle(f"LLMServer:{ROUTED_MODEL}", app_name=running_app.app_name)

    conversation += [
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "Go on."},
    ]
    request = ChatCompletionRequest.model_validate({"model": ROUTED_MODEL, "messages": conversation})
    second = json.loads(engine.generate.remote(request).result())
    usage = [
        (first["usage"]["prompt_tokens"], 0),
        (second["usage"]["prompt_tokens"], second["usage"]["prompt_tokens_details"]["cached_tokens"]),
    ]
    assert _served_where_the_previous_turn_ran(usage), usage
