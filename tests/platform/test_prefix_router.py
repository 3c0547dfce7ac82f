"""`PrefixAffinityRouter` inside Serve's own routing machinery (issue #22): the `RequestRouter` base class runs
the routing tasks, its queue-length cache and its backoff; the replicas are stand-ins that answer the
queue-length probe and carry routing stats as the engines report them, so no cluster is needed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve.request_router import PendingRequest

from deployments.prefix_router import PrefixAffinityRouter
from serve_app.prefix_routing import ACTIVE_STAT, HELD_KEYS_STAT, affinity_key, prompt_prefixes, ranking
from serve_app.protocol.chat import ChatCompletionRequest

DEPLOYMENT = DeploymentID(name="LLMServer:model", app_name="openai")
# A generous bound that only a request never given a replica reaches (routing takes milliseconds).
HUNG_AFTER_S = 30.0


@dataclass
class StandInReplica:
    """What the router reads of a replica: its id, its capacity, and its answer to the queue-length probe."""

    unique_id: str
    queue_len: int = 0
    max_ongoing_requests: int = 8
    multiplexed_model_ids: frozenset[str] = frozenset()
    node_id: str = "node"
    availability_zone: str | None = None
    routing_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def replica_id(self) -> ReplicaID:
        return ReplicaID(unique_id=self.unique_id, deployment_id=DEPLOYMENT)

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return self.queue_len


def _router(*replicas: StandInReplica) -> PrefixAffinityRouter:
    router = PrefixAffinityRouter(
        deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.REPLICA, use_replica_queue_len_cache=True
    )
    router.initialize_state(recompute_weight=2.0)
    router.update_replicas(list(replicas))  # type: ignore[arg-type]
    return router


def _call(internal_request_id: str, *args: object) -> PendingRequest:
    metadata = RequestMetadata(request_id="client-id", internal_request_id=internal_request_id)
    return PendingRequest(args=list(args), kwargs={}, metadata=metadata)


def _routed(replicas: list[StandInReplica], calls: list[tuple[str, tuple[object, ...]]]) -> list[str]:
    """The replica each call (internal request id, arguments) is given, all routed at once."""

    async def route() -> list[str]:  # Serve's router and pending calls live on a running event loop
        router = _router(*replicas)
        pending = [_call(internal_request_id, *args) for internal_request_id, args in calls]
        chosen = await asyncio.wait_for(
            asyncio.gather(*(router._choose_replica_for_request(call) for call in pending)), HUNG_AFTER_S
        )
        return [replica.replica_id.unique_id for replica in chosen]

    return asyncio.run(route())


def _sent_one_by_one(replicas: list[StandInReplica], *rounds: list[ChatCompletionRequest]) -> list[list[str]]:
    """The replica each turn is sent to by one router, round after round, one turn after another, every turn
    still running when the next is routed (Serve counts a request sent into the replica's cached queue length,
    as its own router does)."""

    async def route() -> list[list[str]]:
        router = _router(*replicas)
        sent: list[list[str]] = []
        for turns in rounds:
            sent.append([])
            for turn in turns:
                call = _call(f"request-{len(sent)}-{len(sent[-1])}", turn)
                replica = await asyncio.wait_for(router._choose_replica_for_request(call), HUNG_AFTER_S)
                router.on_send_request(replica.replica_id)
                sent[-1].append(replica.replica_id.unique_id)
        return sent

    return asyncio.run(route())


def _opening(task: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "model",
            "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": task}],
        }
    )


def test_calls_made_at_once_while_serving_one_request_all_get_a_replica() -> None:
    """Every call made while serving one request carries that request's internal id; Serve indexes pending
    calls by it, so `GET /v1/models` asking two aliases of one model at once used to leave one call waiting
    forever (the suite's first `/v1/models` hung 60 s)."""
    chosen = _routed([StandInReplica("a"), StandInReplica("b")], [("one-request", ())] * 3)
    assert len(chosen) == 3


def test_a_conversations_calls_made_at_once_go_to_its_replica() -> None:
    ids = ["a", "b", "c"]
    for task in ["Fix the parser", "Add a flag", "Port the settings page", "Profile the export"]:
        turn = _opening(task)
        key = affinity_key(turn)
        assert key is not None
        chosen = _routed([StandInReplica(i) for i in ids], [("one-request", (turn,))] * 2)
        assert chosen == [ranking(key, ids)[0]] * 2


def test_conversations_starting_one_after_another_spread_and_come_back_to_their_replica() -> None:
    tasks = ["Fix the parser", "Add a flag", "Port the settings page", "Profile the export"]
    turns = [_opening(task) for task in tasks]
    first_turns, next_turns = _sent_one_by_one([StandInReplica("a"), StandInReplica("b")], turns, turns)
    assert sorted(first_turns) == ["a", "a", "b", "b"]
    # Their next turns (the first four still counted in Serve's cached queue lengths) go where each one started.
    assert next_turns == first_turns


def test_a_conversation_another_router_placed_goes_to_the_replica_reporting_its_key() -> None:
    """A fresh router (another ingress replica, or this one restarted) knows a conversation only from the
    engines' reports: it follows them, not the key's ranking."""
    turn = _opening("Fix the parser")
    key = affinity_key(turn)
    assert key is not None
    not_first = ranking(key, ["a", "b", "c"])[-1]
    replicas = [StandInReplica(i) for i in ["a", "b", "c"]]
    size = prompt_prefixes(turn)[-1].size
    next(r for r in replicas if r.unique_id == not_first).routing_stats = {HELD_KEYS_STAT: {key: size}}
    assert _sent_one_by_one(replicas, [turn]) == [[not_first]]


def test_a_new_conversation_goes_to_the_replica_reporting_the_fewest_active_conversations() -> None:
    """Between an agent's turns its conversation is in no queue: with the queues empty, the engines' counts of
    their active conversations, not the key's ranking, place a new one."""
    for task in ["Fix the parser", "Add a flag", "Port the settings page", "Profile the export"]:
        replicas = [StandInReplica(i) for i in ["a", "b", "c"]]
        for replica, active in zip(replicas, [3, 0, 2], strict=True):
            replica.routing_stats = {ACTIVE_STAT: active}
        assert _sent_one_by_one(replicas, [_opening(task)]) == [["b"]]


def _long_turn(task: str) -> ChatCompletionRequest:
    """A later turn: the opening, then a 20k-character tool result."""
    call = {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
    return ChatCompletionRequest.model_validate(
        {
            "model": "model",
            "messages": [
                *_opening(task).model_dump()["messages"],
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "x = 1\n" * 4000},
            ],
        }
    )


def test_a_turn_leaves_its_holder_only_when_the_queue_there_outlasts_recomputing_elsewhere() -> None:
    """Replica a reports holding all of a conversation but its last 1,000 characters; b does not hold it. With
    a's queue empty the turn goes to a; with five requests queued there (another router's, counted at the
    size of this one) it goes to b, which recomputes the conversation rather than wait."""
    turn = _long_turn("Fix the parser")
    prefix = prompt_prefixes(turn)[-1]

    def sent_to(queue_len: int) -> str:
        holder = StandInReplica(
            "a", queue_len=queue_len, routing_stats={HELD_KEYS_STAT: {prefix.key: prefix.size - 1000}}
        )
        return _sent_one_by_one([holder, StandInReplica("b")], [turn])[0][0]

    assert sent_to(0) == "a"
    assert sent_to(1) == "a"  # 20k characters of a's queue against 2 × 19k recomputed at b
    assert sent_to(5) == "b"


def test_a_turn_goes_where_less_work_is_in_flight_until_serve_reports_it_complete() -> None:
    """Three conversations that both replicas hold but their last 2,000 characters: the second goes to the
    replica the first is not computing on; once the first completes, as Serve reports, the third goes to the
    first's replica, where nothing is in flight any more."""
    turns = [_long_turn(task) for task in ["Fix the parser", "Add a flag", "Profile the export"]]
    stats = {HELD_KEYS_STAT: {(p := prompt_prefixes(turn)[-1]).key: p.size - 2000 for turn in turns}}

    async def route() -> list[str]:
        router = _router(*[StandInReplica(i, routing_stats=stats) for i in ["a", "b"]])
        chosen = []
        for number, turn in enumerate(turns):
            replica = await router._choose_replica_for_request(_call(f"request-{number}", turn))
            chosen.append(replica.replica_id.unique_id)
            if number == 1:
                router.on_request_completed(replica.replica_id, "request-0")
        return chosen

    first, second, third = asyncio.run(asyncio.wait_for(route(), HUNG_AFTER_S))
    assert second != first
    assert third == first
