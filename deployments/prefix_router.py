"""`PrefixAffinityRouter`: Serve's request router for engine deployments, routing by prompt prefix.

The policy is `serve_app/prefix_routing.py`; this class feeds it Serve's replicas, their queue lengths, how
much of the request's prompt each holds (what this router sent there, and what the replicas' routing stats,
`LLMServer.record_routing_stats`, report) and the work this router has in flight on each. Serve runs one
router per deployment handle, in each process that calls the engines (the ingress and the post-processing
replicas); the engines' reports let them all find a conversation that another one placed, a reporting period
(`HELD_KEYS_REPORT_PERIOD_S`) after it started.
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
    Backlog,
    LatestKeys,
    LatestSizes,
    Prefix,
    choose,
    prompt_prefixes,
    ranking,
)

logger = logging.getLogger("ray.serve")


class PrefixAffinityRouter(RequestRouter):
    # No FIFOMixin: with it, a replica found for one request may be handed to an older pending one, whose
    # prefix lives elsewhere. No LocalityMixin: the replica holding the prefix beats the one on this node.

    def initialize_state(self, recompute_weight: float = 2.0) -> None:  # type: ignore[override]
        self._recompute_weight = recompute_weight
        # Where each conversation went last (its replica's active conversations are counted from it).
        self._placed: LatestKeys[str] = LatestKeys(PLACED_KEYS, ACTIVE_WINDOW_S)
        # How much of each prefix every replica holds, as far as this router sent it: (key, replica) -> size.
        self._held: LatestSizes[tuple[bytes, str]] = LatestSizes(2 * PLACED_KEYS)
        self._backlog = Backlog(IN_FLIGHT_REQUESTS)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """Ranks of replicas, tried in order: the chosen one, then the rest (the shortest queue of them).
        Serve sends the request to the chosen one: an engine replica takes every request it is sent
        (`OUT_OF_REACH_REQUESTS`), so the key's placement is known here."""
        if pending_request is not None:
            # The ranks hold every replica: if none of them takes the request, Serve waits before asking again.
            pending_request.routing_context.should_backoff = True
        prefixes = self._prefixes(pending_request)
        if not prefixes or pending_request is None or len(candidate_replicas) < 2:
            return [candidate_replicas]
        key, size = prefixes[-1].key, prefixes[-1].size
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        ranked = ranking(key, list(by_id))
        queue_lengths = await self._queue_lengths(candidate_replicas)
        # After the wait: a call of the same conversation routed meanwhile is then counted here.
        held_by_prefix = {replica_id: self._held_of(prefixes, replica) for replica_id, replica in by_id.items()}
        held = {replica_id: max(held_of) for replica_id, held_of in held_by_prefix.items()}
        holders = [replica_id for replica_id in ranked if held_by_prefix[replica_id][-1]]  # of the conversation
        backlog = self._backlogs(candidate_replicas, queue_lengths, size)
        active = self._active(candidate_replicas)
        chosen = choose(ranked, queue_lengths, size, held, holders, backlog, active, self._recompute_weight)
        self._placed.note(key, chosen, time.monotonic())
        self._backlog.add(pending_request.metadata.internal_request_id, chosen, max(0, size - held[chosen]))
        for prefix in prefixes:
            self._held.note((prefix.key, chosen), prefix.size)
        return [[by_id[chosen]], [by_id[replica] for replica in ranked if replica != chosen]]

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """Serve calls this once for every request it sent, however it ended."""
        self._backlog.remove(internal_request_id)

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

    def _held_of(self, prefixes: list[Prefix], replica: RunningReplica) -> list[int]:
        """How many characters of each prefix `replica` holds: as much as this router sent there (known at
        once) or as the replica reports (the other routers' too, a period late)."""
        replica_id = replica.replica_id.unique_id
        reported: dict[bytes, int] = replica.routing_stats.get(HELD_KEYS_STAT, {})
        if not isinstance(reported, dict):  # a replica of an earlier version, mid-upgrade, reports a set of keys
            reported = {}
        return [
            min(prefix.size, max(self._held.get((prefix.key, replica_id)), reported.get(prefix.key, 0)))
            for prefix in prefixes
        ]

    def _backlogs(self, replicas: list[RunningReplica], queue_lengths: dict[str, int], size: int) -> dict[str, float]:
        """Each replica's work in flight: what this router sent there, and its queue's other requests (other
        routers') at the typical work of this router's requests (or this one's size, when it tracks none)."""
        typical = self._backlog.typical() or size
        backlogs = {}
        for replica in replicas:
            replica_id = replica.replica_id.unique_id
            others = max(0, queue_lengths.get(replica_id, 0) - self._backlog.count(replica_id))
            backlogs[replica_id] = self._backlog.work(replica_id) + others * typical
        return backlogs

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
    def _prefixes(pending_request: PendingRequest | None) -> list[Prefix]:
        """The request's prompt prefixes. An exception raised here would leave the request waiting forever
        (Serve ends the routing task, not the request): a request whose prefixes fail goes to the shortest queue."""
        if pending_request is None or not pending_request.args:
            return []
        try:
            return prompt_prefixes(pending_request.args[0])
        except Exception:
            logger.exception("no prompt prefixes for this request; it goes to the shortest queue")
            return []

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
