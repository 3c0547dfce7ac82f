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
from serve_app.prefix_routing import ACTIVE_STAT, HELD_KEYS_STAT, affinity_key, ranking
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
    router.initialize_state(max_load_factor=1.5)
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
    next(r for r in replicas if r.unique_id == not_first).routing_stats = {HELD_KEYS_STAT: frozenset({key})}
    assert _sent_one_by_one(replicas, [turn]) == [[not_first]]


def test_a_new_conversation_goes_to_the_replica_reporting_the_fewest_active_conversations() -> None:
    """Between an agent's turns its conversation is in no queue: with the queues empty, the engines' counts of
    their active conversations, not the key's ranking, place a new one."""
    for task in ["Fix the parser", "Add a flag", "Port the settings page", "Profile the export"]:
        replicas = [StandInReplica(i) for i in ["a", "b", "c"]]
        for replica, active in zip(replicas, [3, 0, 2], strict=True):
            replica.routing_stats = {ACTIVE_STAT: active}
        assert _sent_one_by_one(replicas, [_opening(task)]) == [["b"]]


def test_a_key_sending_many_requests_at_once_spills_by_its_queue_and_its_completed_requests_do_not_count() -> None:
    """Both replicas report four active conversations, and one of them has three requests queued. If they are
    this key's, still running, the key's next request goes to the other replica (by the queues its holder has
    had its share); if they completed, as Serve reports, and the queue is other conversations' turns, the next
    request is this conversation's next turn and stays (by the conversations its holder may take six)."""
    turn = _opening("Summarize this document")

    async def route(completed: bool) -> list[str]:
        router = _router(*[StandInReplica(i, routing_stats={ACTIVE_STAT: 4}) for i in ["a", "b"]])
        chosen = []
        for number in range(4):
            replica = await router._choose_replica_for_request(_call(f"request-{number}", turn))
            router.on_send_request(replica.replica_id)  # Serve's queue length: 1, 2, 3 (not decremented here)
            if completed:
                router.on_request_completed(replica.replica_id, f"request-{number}")
            chosen.append(replica.replica_id.unique_id)
        return chosen

    running = asyncio.run(asyncio.wait_for(route(completed=False), HUNG_AFTER_S))
    home = running[0]
    assert running == [home, home, home, ({"a", "b"} - {home}).pop()]
    assert asyncio.run(asyncio.wait_for(route(completed=True), HUNG_AFTER_S)) == [home] * 4
