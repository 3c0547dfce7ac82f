"""`PrefixAffinityRouter`: Serve's request router for engine deployments, routing by prompt prefix.

The policy is `serve_app/prefix_routing.py`; this class feeds it Serve's replicas, their queue lengths and
the holders of a request's key: where this router last sent the key, then the replicas whose routing stats
(`LLMServer.record_routing_stats`) name it. Serve runs one router per deployment handle, in each process that
calls the engines (the ingress and the post-processing replicas); the engines' reports let them all find a
conversation that another one placed, a reporting period (`HELD_KEYS_REPORT_PERIOD_S`) after it started.
"""

from __future__ import annotations

import logging
import time

from ray.serve._private.common import ReplicaID, RequestMetadata
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from serve_app.prefix_routing import (
    ACTIVE_STAT,
    ACTIVE_WINDOW_S,
    HELD_KEYS_STAT,
    IN_FLIGHT_REQUESTS,
    PLACED_KEYS,
    InFlight,
    LatestKeys,
    affinity_key,
    choose,
    ranking,
)

logger = logging.getLogger("ray.serve")


class PrefixAffinityRouter(RequestRouter):
    # No FIFOMixin: with it, a replica found for one request may be handed to an older pending one, whose
    # prefix lives elsewhere. No LocalityMixin: the replica holding the prefix beats the one on this node.

    def initialize_state(self, max_load_factor: float = 1.5) -> None:  # type: ignore[override]
        self._max_load_factor = max_load_factor
        self._placed: LatestKeys[str] = LatestKeys(PLACED_KEYS, ACTIVE_WINDOW_S)
        self._in_flight = InFlight(IN_FLIGHT_REQUESTS)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """Ranks of replicas, tried in order: the chosen one, then the rest (the shortest queue of them).
        Serve sends the request to the chosen one: an engine replica takes every request it is sent
        (`OUT_OF_REACH_REQUESTS`), so the key's placement is known here."""
        if pending_request is not None:
            # The ranks hold every replica: if none of them takes the request, Serve waits before asking again.
            pending_request.routing_context.should_backoff = True
        key = self._key(pending_request)
        if key is None or pending_request is None or len(candidate_replicas) < 2:
            return [candidate_replicas]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        ranked = ranking(key, list(by_id))
        queue_lengths = await self._queue_lengths(candidate_replicas)
        # After the wait: a call of the same conversation routed meanwhile is then a holder here, not another
        # active conversation that would send this one elsewhere.
        holders = self._holders(key, [by_id[replica] for replica in ranked])
        request_id = pending_request.metadata.internal_request_id
        key_in_flight = self._in_flight.others(key, request_id) > 0
        active = self._active(candidate_replicas)
        chosen = choose(ranked, queue_lengths, holders, self._max_load_factor, active, key_in_flight)
        self._placed.note(key, chosen, time.monotonic())
        self._in_flight.add(key, request_id)
        return [[by_id[chosen]], [by_id[replica] for replica in ranked if replica != chosen]]

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """Serve calls this once for every request it sent, however it ended."""
        self._in_flight.remove(internal_request_id)

    def _fulfill_next_pending_request(
        self, replica: RunningReplica, request_metadata: RequestMetadata | None = None
    ) -> None:
        """Gives `replica` to the request whose routing task chose it.

        Serve's base class finds that request by its internal request id. But every call made while serving
        one request carries that request's id, and Serve indexes only the first of them: when one request
        calls an engine twice at once (`GET /v1/models` asks a model's info once per alias), the second call
        was never given a replica and waited forever. The routing task passes its request's own metadata
        object, so matching that object finds exactly its request.
        """
        for pending in self._pending_requests_to_fulfill:
            if pending.metadata is request_metadata and not pending.future.done():
                self._record_queue_wait_time(pending)
                pending.future.set_result(replica)
                self._remove_pending_request_from_indices(pending)  # by id: maybe a sibling's entry, unused here
                return

    def _holders(self, key: bytes, ranked: list[RunningReplica]) -> list[str]:
        """The replicas that ran the key's latest requests, most likely first: where this router sent it last
        (known at once), then those reporting it, in the key's ranking."""
        holders = [placed] if (placed := self._placed.get(key)) is not None else []
        return holders + [
            replica.replica_id.unique_id
            for replica in ranked
            if key in replica.routing_stats.get(HELD_KEYS_STAT, ()) and replica.replica_id.unique_id not in holders
        ]

    def _active(self, replicas: list[RunningReplica]) -> dict[str, int]:
        """Each replica's active conversations: those this router sent there lately (known at once) or, when
        more, those the replica reports (the other routers' too, a reporting period late)."""
        placed = self._placed.recent(time.monotonic())
        active = {}
        for replica in replicas:
            replica_id = replica.replica_id.unique_id
            active[replica_id] = max(placed.get(replica_id, 0), replica.routing_stats.get(ACTIVE_STAT, 0))
        return active

    @staticmethod
    def _key(pending_request: PendingRequest | None) -> bytes | None:
        """The request's affinity key. An exception raised here would leave the request waiting forever
        (Serve ends the routing task, not the request): a request whose key fails goes to the shortest queue."""
        if pending_request is None or not pending_request.args:
            return None
        try:
            return affinity_key(pending_request.args[0])
        except Exception:
            logger.exception("no affinity key for this request; it goes to the shortest queue")
            return None

    async def _queue_lengths(self, replicas: list[RunningReplica]) -> dict[str, int]:
        """Serve's cached queue lengths (refreshed as requests are sent and finish), probing replicas it has
        none for; a replica that does not answer the probe counts as idle here and is probed again by Serve
        before it gets the request."""
        lengths: dict[str, int] = {}
        missing = []
        for replica in replicas:
            length = self.replica_queue_len_cache.get(replica.replica_id)
            if length is None:
                missing.append(replica)
            else:
                lengths[replica.replica_id.unique_id] = length
        for replica, length in await self._probe_queue_lens(missing, 0):
            if length is not None:
                lengths[replica.replica_id.unique_id] = length
        return lengths
