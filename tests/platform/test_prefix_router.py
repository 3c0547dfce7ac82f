"""`PrefixAffinityRouter` inside Serve's own routing machinery (issue #22): the `RequestRouter` base class runs
the routing tasks, its queue-length cache and its backoff; the replicas are stand-ins that answer the
queue-length probe, so no cluster is needed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve.request_router import PendingRequest

from deployments.prefix_router import PrefixAffinityRouter
from serve_app.prefix_routing import affinity_key, ranking
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


def test_calls_made_at_once_while_serving_one_request_all_get_a_replica() -> None:
    """Every call made while serving one request carries that request's internal id; Serve indexes pending
    calls by it, so `GET /v1/models` asking two aliases of one model at once used to leave one call waiting
    forever (the suite's first `/v1/models` hung 60 s)."""
    chosen = _routed([StandInReplica("a"), StandInReplica("b")], [("one-request", ())] * 3)
    assert len(chosen) == 3


def test_a_conversations_calls_made_at_once_go_to_its_replica() -> None:
    ids = ["a", "b", "c"]
    for task in ["Fix the parser", "Add a flag", "Port the settings page", "Profile the export"]:
        turn = ChatCompletionRequest.model_validate(
            {
                "model": "model",
                "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": task}],
            }
        )
        key = affinity_key(turn)
        assert key is not None
        chosen = _routed([StandInReplica(i) for i in ids], [("one-request", (turn,))] * 2)
        assert chosen == [ranking(key, ids)[0]] * 2
