"""Which engine replica should take a request: the one most likely to hold its prompt's prefix in its cache.

An agent's conversation grows by a tool result per turn; each turn's prompt begins with the whole previous
turn's. vLLM keeps the KV of prompts it computed (its prefix cache), per replica: a turn that lands where the
previous one ran computes only what is new (Cline's second turn: 5.4 s instead of 70 s on a CPU). Serve's
default router picks the shorter of two random queues and scatters a conversation over the replicas.

So a request is routed by its **affinity key**, what stays the same across a conversation's turns: the
client's `prompt_cache_key` when it sends one (Codex does: its conversation id), else the conversation's
opening (tools, system prompt, first user message), or a completion prompt's first characters.

A key's **holders** are the replicas that ran its latest requests: the router remembers where it sent each key,
and every engine replica reports the keys of the requests it ran lately (Serve's routing stats), so a key
placed by another router (another ingress replica) or before a router restarted is found too.

A replica's **load** is what it will be asked to do soon: its queue, or its **active conversations** (keys
whose latest request came in the last `ACTIVE_WINDOW_S`) when those are more. Between an agent's turns its
conversation is in no queue, yet it comes back: a queue is a snapshot, the conversations a replica holds are
its work of the next minutes. A request goes to a holder of its key while that holder's load, the request
counted, stays within `max_load_factor` × the average load, rounded up: consistent hashing with bounded
loads (Mirrokni et al., 2018), so an unlucky spread does not pile onto one replica, while a burst of its own
conversations' turns does not move one of them to a replica that holds as many (it would recompute its history
there, then stay and unbalance both). A key with another request in flight (many requests at once: a batch
sharing a prompt's opening, parallel calls) is bounded by the queues instead: its requests spread as soon as
its holder's queue is past its share.

Any other request, a new conversation or one whose holders are all past the bound, goes to the replica with
the **least work in sight** (its queue plus its active conversations), then the shortest queue: placed by
queues alone, conversations that start while the queues are empty would land where their hash puts them (8 on
two replicas split 4 and 4 only 27% of the time) and stay there. Ties go to the key's ranking by rendezvous
hashing (highest random weight: a hash of the key and the replica's id, best first), so routers that see the
same replicas place a new key alike. A request without a key (embeddings) goes to the shortest queue.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.completions import CompletionRequest

# A completion prompt's opening: ~256 tokens of text, enough to tell documents apart, short enough that a
# prompt growing at its end keeps its key.
COMPLETION_KEY_CHARS = 1024
COMPLETION_KEY_TOKENS = 256
# The routing stat in which an engine replica reports the keys of the requests it ran lately.
HELD_KEYS_STAT = "affinity_keys"
# How many keys a replica reports: more conversations than its prefix cache holds at once on the hardware we
# serve (an agent's 10k-token conversation is ~0.5 GiB of KV for the embedded model in float32, ~1.3 GiB
# for an 8B model in bf16), few enough that a report stays small (16 bytes a key).
HELD_KEYS = 256
# How often Serve asks each engine replica for the keys it holds (and broadcasts them to the routers when they
# changed): a key another router placed is found this late at most, about when an agent's next turn comes.
HELD_KEYS_REPORT_PERIOD_S = 5.0
# How many keys a router remembers where it sent: a shared endpoint's conversations of the last hours.
PLACED_KEYS = 65_536
# The routing stat in which an engine replica reports how many conversations it ran a request of lately.
ACTIVE_STAT = "active_conversations"
# A conversation is active on a replica while its latest request came this recently: longer than an agent's
# tool runs between turns (seconds to a minute), shorter than a user's pause before the next task.
ACTIVE_WINDOW_S = 120.0
# How many requests in flight a router tracks by key: more than its replicas run at once.
IN_FLIGHT_REQUESTS = 65_536

V = TypeVar("V")


def affinity_key(request: object) -> bytes | None:
    """What stays the same across a conversation's turns; None when the request has no prompt to reuse.

    Messages count by role, name and text: the extras clients attach and move from turn to turn (Anthropic-style
    `cache_control` marks on the latest messages) must not change the key."""
    if isinstance(request, ChatCompletionRequest):
        if isinstance(request.prompt_cache_key, str) and request.prompt_cache_key:
            return _digest("key", request.prompt_cache_key)
        opening = []
        for message in request.messages:
            opening += [message.role, message.name or "", message.text()]
            if message.role == "user":
                break
        tools = [json.dumps(tool.model_dump(), sort_keys=True, default=str) for tool in request.tools or ()]
        return _digest("chat", *tools, "\x00", *opening)
    if isinstance(request, CompletionRequest) and (prompts := request.prompts()):
        first = prompts[0]
        if isinstance(first, str):
            return _digest("text", first[:COMPLETION_KEY_CHARS])
        return _digest("tokens", ",".join(map(str, first[:COMPLETION_KEY_TOKENS])))
    return None


def _digest(*parts: str) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))  # JSON lets a lone surrogate through
        digest.update(b"\x1f")
    return digest.digest()


def ranking(key: bytes, replica_ids: Sequence[str]) -> list[str]:
    """The replicas in the key's order of preference: highest random weight first."""

    def weight(replica_id: str) -> bytes:
        return hashlib.blake2b(key + replica_id.encode(), digest_size=8).digest()

    return sorted(replica_ids, key=weight, reverse=True)


def choose(
    ranked: Sequence[str],
    queue_lengths: Mapping[str, int],
    holders: Sequence[str],
    max_load_factor: float,
    active: Mapping[str, int],
    key_in_flight: bool = False,
) -> str:
    """The first of the key's `holders` (most likely first) that stays within the bound once it takes the
    request: at most `max_load_factor` × the average, rounded up (so an idle replica always qualifies),
    measured in loads, or in queues when another request of the key is in flight (`key_in_flight`: one key
    sending many at once spreads by its queue). A replica's load is its queue or its `active` conversations,
    whichever is more; taking the request adds one to its queue, not to its conversations (a holder counts
    this one already). With no holder within the bound (a new conversation, or one whose holders are all
    past it): the replica with the least work in sight, its queue plus its active conversations, then the
    shortest queue. The key's ranking breaks ties."""

    def queue(replica: str) -> int:
        return queue_lengths.get(replica, 0)

    def load(replica: str) -> int:
        return queue(replica) if key_in_flight else max(queue(replica), active.get(replica, 0))

    def taken(replica: str) -> int:
        return queue(replica) + 1 if key_in_flight else max(queue(replica) + 1, active.get(replica, 0))

    total = sum(load(replica) for replica in ranked)
    for replica in holders:
        if replica not in ranked:  # a replica that left holds nothing
            continue
        if taken(replica) <= math.ceil(max_load_factor * (total - load(replica) + taken(replica)) / len(ranked)):
            return replica
    # The sum, not the larger: requests without a conversation (a one-off chat has a key of its own) count as
    # active for a while and would otherwise hide a replica's long queue.
    return min(ranked, key=lambda replica: (queue(replica) + active.get(replica, 0), queue(replica)))


class InFlight:
    """Which requests of each key are in flight: added when routed, removed when they complete. At most
    `capacity` requests are tracked (the oldest is forgotten first), so one whose completion never comes
    cannot grow the table."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._key_of: OrderedDict[str, bytes] = OrderedDict()
        self._requests: dict[bytes, set[str]] = {}

    def add(self, key: bytes, request_id: str) -> None:
        if request_id in self._key_of:  # routed again (a retry): still one request
            return
        self._key_of[request_id] = key
        self._requests.setdefault(key, set()).add(request_id)
        if len(self._key_of) > self._capacity:
            self.remove(next(iter(self._key_of)))

    def remove(self, request_id: str) -> None:
        key = self._key_of.pop(request_id, None)
        if key is not None:
            self._requests[key].discard(request_id)
            if not self._requests[key]:
                del self._requests[key]

    def others(self, key: bytes, request_id: str) -> int:
        """How many requests of `key` other than `request_id` are in flight."""
        requests = self._requests.get(key, set())
        return len(requests) - (request_id in requests)


class LatestKeys(Generic[V]):
    """The affinity keys of the latest requests, each with a value (where it went) and when, at most `capacity`
    of them: the key used longest ago leaves first. It counts, by value, the keys used in the last `window_s`
    as they come and go, so a router asks for its replicas' active conversations in constant time, however
    many one-off chats it placed (walking them took 1.2 ms a request at 12k in the window). Moments passed in
    never go back (`time.monotonic()`)."""

    def __init__(self, capacity: int, window_s: float) -> None:
        self._capacity = capacity
        self._window_s = window_s
        self._values: OrderedDict[bytes, tuple[V, float]] = OrderedDict()
        # The keys used within the window, oldest first (a suffix of `_values`), and how many went to each value.
        self._recent: OrderedDict[bytes, None] = OrderedDict()
        self._recent_counts: Counter[V] = Counter()

    def note(self, key: bytes, value: V, now: float) -> None:
        if key in self._recent:
            self._uncount(self._values[key][0])
        self._values[key] = (value, now)
        self._values.move_to_end(key)
        self._recent[key] = None
        self._recent.move_to_end(key)
        self._recent_counts[value] += 1
        if len(self._values) > self._capacity:
            oldest, (oldest_value, _) = self._values.popitem(last=False)
            if oldest in self._recent:
                del self._recent[oldest]
                self._uncount(oldest_value)
        self._leave_window(now)

    def get(self, key: bytes) -> V | None:
        noted = self._values.get(key)
        return None if noted is None else noted[0]

    def recent(self, now: float) -> dict[V, int]:
        """How many of the keys used in the window ending `now` went to each value (where each went last)."""
        self._leave_window(now)
        return dict(self._recent_counts)

    def keys(self) -> frozenset[bytes]:
        """A set, not a list: Serve broadcasts a replica's routing stats when they change, and a conversation
        coming back changes the order, not what the replica holds."""
        return frozenset(self._values)

    def _leave_window(self, now: float) -> None:
        while self._recent:
            oldest = next(iter(self._recent))
            value, noted_at = self._values[oldest]
            if noted_at >= now - self._window_s:
                return
            del self._recent[oldest]
            self._uncount(value)

    def _uncount(self, value: V) -> None:
        self._recent_counts[value] -= 1
        if not self._recent_counts[value]:
            del self._recent_counts[value]
