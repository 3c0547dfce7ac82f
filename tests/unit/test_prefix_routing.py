"""Prefix-affinity routing (issue #22, `serve_app/prefix_routing.py`): a conversation's turns share a key and an
opening with the agent's other conversations; a turn goes where it would be answered soonest, recomputing
counted; new conversations spread over the replicas; the latest keys, sizes and work in flight are tracked
within bounds."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from serve_app.prefix_routing import (
    ACTIVE_STAT,
    ACTIVE_WINDOW_S,
    CHARACTERS_PER_TOKEN,
    HELD_KEYS_STAT,
    Backlog,
    EngineReport,
    LatestKeys,
    LatestSizes,
    Prefix,
    affinity_key,
    choose,
    prompt_prefixes,
    ranking,
)
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


def test_a_chat_prompt_has_its_agents_opening_then_its_conversation() -> None:
    """Every conversation of an agent shares its opening (tools and system prompt); a conversation's turns
    share its key and grow, a tool call's name and arguments counted."""
    first = prompt_prefixes(chat(OPENING))
    later = prompt_prefixes(chat([*OPENING, *TURN]))
    other = prompt_prefixes(chat([OPENING[0], {"role": "user", "content": "Add a README"}]))
    assert [p.key for p in later] == [p.key for p in first]
    assert first[0].key == other[0].key and first[1].key != other[1].key
    assert first[0].size == other[0].size > len(json.dumps(TOOLS[0])) + len(OPENING[0]["content"])
    assert first[1].size == first[0].size + len(OPENING[1]["content"])
    assert later[1].size - first[1].size == len("read_file") + len("{}") + len(TURN[1]["content"])
    assert later[1].key == affinity_key(chat([*OPENING, *TURN]))
    no_opening = prompt_prefixes(ChatCompletionRequest.model_validate({"model": "m", "messages": OPENING[1:]}))
    assert len(no_opening) == 1  # nothing shared but the conversation itself


def test_a_completion_prompt_is_one_prefix_sized_in_characters() -> None:
    assert [p.size for p in prompt_prefixes(CompletionRequest(model="m", prompt="x" * 3000))] == [3000]
    tokens = prompt_prefixes(CompletionRequest(model="m", prompt=list(range(100))))
    assert [p.size for p in tokens] == [100 * CHARACTERS_PER_TOKEN]
    assert prompt_prefixes(EmbeddingRequest(model="m", input="hello")) == []


def _choose(
    queues: dict[str, int] | None = None,
    size: int = 10_000,
    held: dict[str, int] | None = None,
    backlog: dict[str, float] | None = None,
    active: dict[str, int] | None = None,
    ranked: list[str] | None = None,
    weight: float = 2.0,
) -> str:
    """The choice among replicas a and b (unless `ranked` says otherwise); holders are those holding any of
    the conversation (more than its opening: `OPENING_HELD` characters)."""
    ranked = ranked or ["a", "b"]
    held = held or {}
    holders = [replica for replica in ranked if held.get(replica, 0) > OPENING_HELD]
    return choose(ranked, queues or {}, size, held, holders, backlog or {}, active or {}, weight)


OPENING_HELD = 6_000


def test_a_turn_stays_with_its_holder_until_waiting_there_costs_more_than_recomputing_elsewhere() -> None:
    """A 10k-character conversation whose holder a computed 9k of it, b only the agents' 6k opening: at a it
    computes 1k, at b 4k, which counts twice (2k of extra work, 1k + 2 × 3k = 7k). It stays at a while a's work
    in flight is under 6k."""
    held = {"a": 9_000, "b": OPENING_HELD}
    assert _choose(held=held) == "a"
    assert _choose(held=held, backlog={"a": 5_999}) == "a"
    assert _choose(held=held, backlog={"a": 6_001}) == "b"
    assert _choose(held=held, backlog={"a": 6_001, "b": 1}) == "a"  # b busy too: past the recompute, not moved
    # Counted once (recompute_weight 1): the soonest first token, moved once a's work passes 3k.
    assert _choose(held=held, backlog={"a": 3_001}, weight=1.0) == "b"
    assert _choose(held=held, backlog={"a": 2_999}, weight=1.0) == "a"


def test_a_conversation_held_twice_goes_where_less_is_left_to_compute() -> None:
    """Moved once, a conversation is in both caches: each turn goes to the replica that held more of it, or
    to the other when that one's work in flight makes up the difference."""
    held = {"a": 8_000, "b": 9_000}
    assert _choose(held=held) == "b"
    assert _choose(held=held, backlog={"b": 1_500}) == "b"  # 1.5k < 2 × 1k
    assert _choose(held=held, backlog={"b": 2_500}) == "a"


def test_equal_waits_go_to_the_replica_with_less_work_in_sight_then_the_ranking() -> None:
    held = {"a": 9_000, "b": 9_000}
    assert _choose(held=held, active={"a": 3, "b": 2}) == "b"
    assert _choose(held=held, queues={"a": 1}, active={"a": 2, "b": 3}) == "b"
    assert _choose(held=held) == "a"
    assert _choose(held=held, ranked=["b", "a"]) == "b"


def test_a_holder_that_left_holds_nothing() -> None:
    assert choose(["a", "b"], {"a": 1}, 10_000, {}, ["gone"], {}, {}, 2.0) == "b"


def test_a_new_conversation_goes_to_the_shortest_queue_and_the_ranking_breaks_ties() -> None:
    assert _choose(queues={"a": 2, "b": 1, "c": 1}, ranked=["a", "b", "c"]) == "b"
    assert _choose(queues={"a": 2, "b": 1, "c": 1}, ranked=["c", "b", "a"]) == "c"
    assert _choose() == "a"


def test_conversations_starting_together_split_evenly_over_the_replicas() -> None:
    """Four conversations whose keys all rank replica `a` first, on two replicas, each one's first turn in flight
    when the next starts."""
    keys = [key for key in _keys(40) if ranking(key, ["a", "b"])[0] == "a"][:4]
    queues = {"a": 0, "b": 0}
    for key in keys:
        queues[choose(ranking(key, list(queues)), queues, 10_000, {}, [], {}, {}, 2.0)] += 1
    assert queues == {"a": 2, "b": 2}


def test_a_new_conversation_goes_to_the_least_loaded_replica_its_active_conversations_counted() -> None:
    ranked = ["a", "b", "c"]
    # Idle queues (the agents are between turns): the replica with the fewest conversations, not the ranking.
    assert _choose(active={"a": 3, "b": 1, "c": 2}, ranked=ranked) == "b"
    # Equal loads: the shortest queue, then the ranking.
    assert _choose(queues={"a": 1, "b": 1, "c": 0}, active={"a": 1, "b": 1, "c": 2}, ranked=ranked) == "c"
    assert _choose(active={"a": 2, "b": 2, "c": 2}, ranked=ranked) == "a"


def test_one_off_requests_counted_as_active_do_not_hide_a_long_queue() -> None:
    """An endpoint of one-off chats: each has a key of its own and counts as active for a while, ~300 on each
    replica. A new one goes where the queue plus the conversations is least, not to the replica with one
    conversation fewer and a queue 48 longer."""
    assert _choose(queues={"a": 50, "b": 2}, active={"a": 300, "b": 301}) == "b"


def test_conversations_that_start_while_the_queues_are_empty_split_evenly() -> None:
    """Eight agent sessions, each starting while the others are between turns (every queue empty), on two
    replicas, the conversations counted as the router places them: four each, wherever their keys rank."""
    active = {"a": 0, "b": 0}
    for key in _keys(8):
        active[choose(ranking(key, list(active)), {}, 10_000, {}, [], {}, active, 2.0)] += 1
    assert active == {"a": 4, "b": 4}


def test_the_work_in_flight_is_counted_by_replica_until_each_request_completes() -> None:
    backlog = Backlog(capacity=3)
    assert backlog.typical() is None
    backlog.add("r1", "a", 100.0)
    backlog.add("r1", "b", 100.0)  # routed again (a retry): counted where it went now
    backlog.add("r2", "b", 300.0)
    assert (backlog.work("a"), backlog.work("b"), backlog.count("b")) == (0.0, 400.0, 2)
    assert backlog.typical() == 200.0
    backlog.remove("r1")
    backlog.remove("never-routed")
    assert (backlog.work("b"), backlog.count("b")) == (300.0, 1)
    for number in range(3, 6):  # past the capacity: the oldest (r2) is forgotten
        backlog.add(f"r{number}", "a", 10.0)
    assert (backlog.work("a"), backlog.work("b"), backlog.count("b")) == (30.0, 0.0, 0)


def test_the_latest_sizes_stay_and_the_one_noted_longest_ago_leaves() -> None:
    sizes: LatestSizes[bytes] = LatestSizes(2)
    sizes.note(b"first", 10)
    sizes.note(b"second", 20)
    sizes.note(b"first", 30)  # noted again: now the newest
    sizes.note(b"third", 40)
    assert (sizes.get(b"first"), sizes.get(b"second"), sizes.get(b"third")) == (30, 0, 40)
    assert sizes.snapshot() == {b"first": 30, b"third": 40}


def test_the_latest_keys_stay_and_the_one_used_longest_ago_leaves() -> None:
    latest: LatestKeys[str] = LatestKeys(2, window_s=100.0)
    latest.note(b"first", "a", 1.0)
    latest.note(b"second", "b", 2.0)
    latest.note(b"first", "c", 3.0)  # used again: now the newest, and placed elsewhere
    latest.note(b"third", "a", 4.0)  # "second" leaves
    assert latest.recent(5.0) == {"c": 1, "a": 1}


def test_the_keys_used_within_the_window_are_counted_where_they_went_last() -> None:
    latest: LatestKeys[str] = LatestKeys(10, window_s=2.0)
    for moment, (key, replica) in enumerate([(b"k1", "a"), (b"k2", "b"), (b"k3", "a"), (b"k1", "b")]):
        latest.note(key, replica, float(moment))
    assert latest.recent(3.0) == {"a": 1, "b": 2}  # k1 once, where it went last (b); k2, k3
    assert latest.recent(4.0) == {"a": 1, "b": 1}  # k2 left the window
    latest.note(b"k3", "b", 4.5)  # k3 moved to b: counted there only
    assert latest.recent(5.0) == {"b": 2}
    assert latest.recent(9.0) == {}
    latest.note(b"k2", "a", 10.0)  # out of the window, still remembered: moved, not counted twice
    assert latest.recent(10.0) == {"a": 1}


def test_a_key_pushed_out_by_the_capacity_is_no_longer_counted() -> None:
    latest: LatestKeys[str] = LatestKeys(2, window_s=100.0)
    latest.note(b"k1", "a", 1.0)
    latest.note(b"k2", "a", 2.0)
    latest.note(b"k3", "b", 3.0)
    assert latest.recent(4.0) == {"a": 1, "b": 1}


def test_an_engine_reports_its_prefixes_latest_sizes_and_its_active_conversations() -> None:
    report = EngineReport()
    opening = Prefix(b"opening", 100)
    report.note([opening, Prefix(b"first", 150)], 1.0)
    report.note([opening, Prefix(b"second", 120)], 2.0)
    report.note([opening, Prefix(b"first", 300)], 3.0)  # the first conversation's next turn
    report.note([], 4.0)  # an embedding: no prompt to reuse
    held = {b"opening": 100, b"first": 300, b"second": 120}
    assert report.stats(5.0) == {HELD_KEYS_STAT: held, ACTIVE_STAT: 2}
    assert report.stats(2.5 + ACTIVE_WINDOW_S) == {HELD_KEYS_STAT: held, ACTIVE_STAT: 1}  # the second went quiet
