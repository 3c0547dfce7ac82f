"""Prefix-affinity routing (issue #22, `serve_app/prefix_routing.py`): a conversation's turns share a key, a
key's turns go to its holder while load allows, new conversations spread over the shortest queues, and the
latest keys are remembered within a bound."""

from __future__ import annotations

from collections import Counter
from typing import Any

from serve_app.prefix_routing import InFlight, LatestKeys, affinity_key, choose, ranking
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.completions import CompletionRequest
from serve_app.protocol.embeddings import EmbeddingRequest

TOOLS = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
OPENING: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Fix the failing test in parser.py"},
]
CALL = {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
TURN: list[dict[str, Any]] = [
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "def parse(): ..."},
]


def chat(messages: list[dict[str, Any]], **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, "tools": TOOLS, **fields})


def test_every_turn_of_a_conversation_has_the_key_of_its_opening() -> None:
    first = affinity_key(chat(OPENING))
    assert first is not None
    assert affinity_key(chat([*OPENING, *TURN])) == first
    assert affinity_key(chat([*OPENING, *TURN, *TURN, {"role": "user", "content": "and now?"}])) == first


def test_extras_clients_move_between_turns_leave_the_key_alone() -> None:
    """Anthropic-style clients mark the latest user message with `cache_control`, then move the mark on."""
    marked = {"role": "user", "content": [{"type": "text", "text": OPENING[1]["content"], "cache_control": {}}]}
    assert affinity_key(chat([OPENING[0], marked])) == affinity_key(chat([*OPENING, *TURN]))


def test_a_lone_surrogate_anywhere_still_gives_a_key() -> None:
    """A lone surrogate (a file pasted cut mid-character) in the messages, the tools or the client's key."""
    cut = "half a pair: \ud83d"
    assert affinity_key(chat([OPENING[0], {"role": "user", "content": cut}])) is not None
    tool = {"type": "function", "function": {"name": "f", "description": cut}}
    assert affinity_key(chat(OPENING, tools=[tool])) is not None
    assert affinity_key(chat(OPENING, prompt_cache_key=cut)) is not None


def test_another_task_tool_set_or_system_prompt_is_another_key() -> None:
    first = affinity_key(chat(OPENING))
    assert affinity_key(chat([OPENING[0], {"role": "user", "content": "Add a README"}])) != first
    assert affinity_key(chat(OPENING, tools=[*TOOLS, {"type": "function", "function": {"name": "ls"}}])) != first
    assert affinity_key(chat([{"role": "system", "content": "Be brief."}, OPENING[1]])) != first


def test_a_client_prompt_cache_key_names_the_conversation() -> None:
    """Codex sends its conversation id as `prompt_cache_key`: two conversations with the same opening stay apart."""
    one, other = chat(OPENING, prompt_cache_key="conv-1"), chat(OPENING, prompt_cache_key="conv-2")
    assert affinity_key(one) != affinity_key(other)
    assert affinity_key(chat([*OPENING, *TURN], prompt_cache_key="conv-1")) == affinity_key(one)


def test_a_completion_prompt_keeps_its_key_as_it_grows_at_the_end() -> None:
    document = "def main():\n" + "    x = 1\n" * 200
    key = affinity_key(CompletionRequest(model="m", prompt=document))
    assert key == affinity_key(CompletionRequest(model="m", prompt=document + "    return x\n"))
    assert key != affinity_key(CompletionRequest(model="m", prompt="import os\n" + document))
    tokens = list(range(1000))
    token_key = affinity_key(CompletionRequest(model="m", prompt=tokens))
    assert token_key == affinity_key(CompletionRequest(model="m", prompt=[*tokens, 5]))
    assert token_key != affinity_key(CompletionRequest(model="m", prompt=[7, *tokens]))


def test_embeddings_and_an_empty_prompt_list_have_no_key() -> None:
    assert affinity_key(EmbeddingRequest(model="m", input="hello")) is None
    assert affinity_key(CompletionRequest(model="m", prompt=[])) is None  # refused with a 400 by the engine


def _keys(count: int) -> list[bytes]:
    return [key for i in range(count) if (key := affinity_key(CompletionRequest(model="m", prompt=f"doc {i}")))]


def test_keys_spread_evenly_and_the_ranking_ignores_the_order_replicas_are_listed_in() -> None:
    replicas = ["a", "b", "c", "d"]
    firsts = Counter(ranking(key, replicas)[0] for key in _keys(2000))
    assert set(firsts) == set(replicas)
    assert all(400 <= count <= 600 for count in firsts.values()), firsts
    key = _keys(1)[0]
    assert ranking(key, replicas) == ranking(key, list(reversed(replicas)))


def test_a_holder_takes_the_request_until_its_load_reaches_the_bound() -> None:
    ranked = ["a", "b", "c"]
    assert choose(ranked, {}, ["b"], 1.5, {}) == "b"  # idle: the key's holder, not its first in the ranking
    # 3 queued + this one = 4 requests; bound ceil(1.5 * 4 / 3) = 2.
    assert choose(ranked, {"a": 1, "b": 1, "c": 1}, ["b"], 1.5, {}) == "b"
    assert choose(ranked, {"a": 1, "b": 2, "c": 0}, ["b"], 1.5, {}) == "c"  # past it: the shortest queue
    # Two holders (a conversation moved once): the first under the bound, ceil(1.2 * 6 / 3) = 3.
    assert choose(ranked, {"a": 1, "b": 3, "c": 1}, ["b", "c"], 1.2, {}) == "c"
    assert choose(ranked, {"a": 3, "b": 3, "c": 0}, ["a", "b"], 1.0, {}) == "c"
    assert choose(ranked, {"a": 0, "b": 0}, ["gone"], 1.5, {}) == "a"  # a holder that left is no holder


def test_a_new_conversation_goes_to_the_shortest_queue_and_the_ranking_breaks_ties() -> None:
    assert choose(["a", "b", "c"], {"a": 2, "b": 1, "c": 1}, [], 1.5, {}) == "b"
    assert choose(["c", "b", "a"], {"a": 2, "b": 1, "c": 1}, [], 1.5, {}) == "c"
    assert choose(["a", "b"], {}, [], 1.5, {}) == "a"


def test_conversations_starting_together_split_evenly_over_the_replicas() -> None:
    """Four conversations whose keys all rank replica `a` first, on two replicas, each one's first turn in flight
    when the next starts: by ranking with a 1.5 load bound, three would share `a` while `b` ran one."""
    keys = [key for key in _keys(40) if ranking(key, ["a", "b"])[0] == "a"][:4]
    queues = {"a": 0, "b": 0}
    for key in keys:
        queues[choose(ranking(key, list(queues)), queues, [], 1.5, {})] += 1
    assert queues == {"a": 2, "b": 2}


def test_a_load_factor_of_one_balances_strictly_and_a_large_one_never_leaves_the_holder() -> None:
    ranked = ["a", "b"]
    assert choose(ranked, {"a": 1, "b": 0}, ["a"], 1.0, {}) == "b"
    assert choose(ranked, {"a": 50, "b": 0}, ["a"], 100.0, {}) == "a"


def test_a_new_conversation_goes_to_the_least_loaded_replica_its_active_conversations_counted() -> None:
    ranked = ["a", "b", "c"]
    # Idle queues (the agents are between turns): the replica with the fewest conversations, not the ranking.
    assert choose(ranked, {}, [], 1.5, {"a": 3, "b": 1, "c": 2}) == "b"
    # Equal loads: the shortest queue, then the ranking.
    assert choose(ranked, {"a": 1, "b": 1, "c": 0}, [], 1.5, {"a": 2, "b": 2, "c": 2}) == "c"
    assert choose(ranked, {}, [], 1.5, {"a": 2, "b": 2, "c": 2}) == "a"
    # A replica's load is its queue when that is more: b's 3 queued requests count, for all its quiet.
    assert choose(ranked, {"a": 1, "b": 3, "c": 0}, [], 1.5, {"a": 2, "b": 0, "c": 1}) == "c"
    # Loads 9 (8 queued + this request), 3 and 2 = 14; bound ceil(1.5 * 14 / 3) = 7: the holder a is past it, and
    # the conversation goes where the least work is in sight, not to the shortest queue (b: 3 conversations).
    assert choose(ranked, {"a": 8, "b": 0, "c": 2}, ["a"], 1.5, {"a": 1, "b": 3, "c": 0}) == "c"


def test_a_burst_of_turns_does_not_move_a_conversation_to_a_replica_holding_as_many() -> None:
    """Four sessions on each of two replicas; three of a's turns arrive at once while b's sessions are all
    between turns. By queues (3 against 0) the next would move to b, recompute its history there, and leave
    b with five conversations; by load (4 against 4: a's conversations are its work, b's are b's) it stays."""
    assert choose(["b", "a"], {"a": 3, "b": 0}, ["a"], 1.5, {"a": 4, "b": 4}) == "a"
    # Conversations past their share on a (a replica joined, say) move to b until a is within the bound.
    assert choose(["b", "a"], {"a": 1, "b": 0}, ["a"], 1.5, {"a": 8, "b": 0}) == "b"


def test_a_key_with_requests_in_flight_spreads_by_the_queues() -> None:
    """Many requests of one key at once (a batch sharing a prompt's opening) are no agent's turns: counted by
    the conversations, a's share would allow 6; by the queues, its fourth request goes to b."""
    assert choose(["b", "a"], {"a": 3, "b": 0}, ["a"], 1.5, {"a": 4, "b": 4}, key_in_flight=True) == "b"
    assert choose(["b", "a"], {"a": 2, "b": 0}, ["a"], 1.5, {"a": 4, "b": 4}, key_in_flight=True) == "a"


def test_one_off_requests_counted_as_active_do_not_hide_a_long_queue() -> None:
    """An endpoint of one-off chats: each has a key of its own and counts as active for a while, ~300 on each
    replica. A new one goes where the queue plus the conversations is least, not to the replica with one
    conversation fewer and a queue 48 longer."""
    assert choose(["a", "b"], {"a": 50, "b": 2}, [], 1.5, {"a": 300, "b": 301}) == "b"


def test_conversations_that_start_while_the_queues_are_empty_split_evenly() -> None:
    """Eight agent sessions, each starting while the others are between turns (every queue empty), on two
    replicas, the conversations counted as the router places them: four each, wherever their keys rank."""
    active = {"a": 0, "b": 0}
    for key in _keys(8):
        active[choose(ranking(key, list(active)), {}, [], 1.5, active)] += 1
    assert active == {"a": 4, "b": 4}


def test_the_latest_keys_stay_and_the_one_used_longest_ago_leaves() -> None:
    latest: LatestKeys[str] = LatestKeys(2, window_s=100.0)
    latest.note(b"first", "a", 1.0)
    latest.note(b"second", "b", 2.0)
    latest.note(b"first", "c", 3.0)  # used again: now the newest, and placed elsewhere
    latest.note(b"third", "a", 4.0)
    assert latest.get(b"first") == "c"
    assert latest.get(b"second") is None
    assert latest.keys() == frozenset({b"first", b"third"})


def test_requests_in_flight_are_counted_by_key_until_they_complete() -> None:
    in_flight = InFlight(capacity=3)
    in_flight.add(b"k", "r1")
    in_flight.add(b"k", "r1")  # routed again (a retry): one request
    assert in_flight.others(b"k", "r1") == 0
    assert in_flight.others(b"k", "r2") == 1
    in_flight.add(b"k", "r2")
    in_flight.add(b"other", "r3")
    assert in_flight.others(b"k", "r3") == 2
    in_flight.remove("r1")
    in_flight.remove("never-routed")
    assert in_flight.others(b"k", "r9") == 1
    in_flight.add(b"x", "r4")
    in_flight.add(b"x", "r5")  # past the capacity: the oldest (r2) is forgotten
    assert in_flight.others(b"k", "r9") == 0
    assert in_flight.others(b"x", "r9") == 2


def test_the_keys_used_within_the_window_are_counted_where_they_went_last() -> None:
    latest: LatestKeys[str] = LatestKeys(10, window_s=2.0)
    for moment, (key, replica) in enumerate([(b"k1", "a"), (b"k2", "b"), (b"k3", "a"), (b"k1", "b")]):
        latest.note(key, replica, float(moment))
    assert latest.recent(3.0) == {"a": 1, "b": 2}  # k1 once, where it went last (b); k2, k3
    assert latest.recent(4.0) == {"a": 1, "b": 1}  # k2 left the window
    latest.note(b"k3", "b", 4.5)  # k3 moved to b: counted there only
    assert latest.recent(5.0) == {"b": 2}
    assert latest.recent(9.0) == {}
    assert latest.get(b"k2") == "b"  # out of the window, still remembered


def test_a_key_pushed_out_by_the_capacity_is_no_longer_counted() -> None:
    latest: LatestKeys[str] = LatestKeys(2, window_s=100.0)
    latest.note(b"k1", "a", 1.0)
    latest.note(b"k2", "a", 2.0)
    latest.note(b"k3", "b", 3.0)
    assert latest.recent(4.0) == {"a": 1, "b": 1}
