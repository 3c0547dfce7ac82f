"""Which engine replica should take a request: the one that will answer it soonest, what it holds of the
prompt in its prefix cache counted.

An agent's conversation grows by a tool result per turn; each turn's prompt begins with the whole previous
turn's. vLLM keeps the KV of prompts it computed (its prefix cache), per replica: a turn that lands where the
previous one ran computes only what is new (Cline's second turn: 5.4 s instead of 70 s on a CPU). Serve's
default router picks the shorter of two random queues and scatters a conversation over the replicas.

A prompt has **prefixes** that others share (`prompt_prefixes`): a chat's **opening** (its tool schemas and
system messages: every conversation of an agent begins with them), then its **conversation**, named by its
**affinity key**, what stays the same across its turns: the client's `prompt_cache_key` when it sends one
(Codex does: its conversation id), else the conversation's opening and first user message. A completion
prompt has one, named by its first characters. Sizes are counted in characters.

How much of a prompt a replica **holds** is the longest of its prefixes it ran lately, as long as it was
then: the router remembers what it sent where, and every engine replica reports the sizes of the prefixes it
ran lately (Serve's routing stats), so a conversation placed by another router (another ingress replica) or
before a router restarted is found too. A replica's **backlog** is the work of its requests in flight: what
each had to compute when it was routed, until it completes.

A conversation that some replica holds goes where its **estimated wait** is least: the backlog plus what the
replica would compute of the prompt, a character recomputed because another replica holds it counting
`recompute_weight` × (it also delays every request behind it, and its own the most). A turn therefore stays
with its conversation unless its replica is busier than recomputing the history elsewhere would cost: a long
conversation stays through a burst, a short one moves to an idle replica, and one that moved is then in both
caches and goes to either, each counting what is new to it. A batch sharing a prompt spreads once its
holder's backlog outweighs computing the prompt again.

A **new conversation** goes to the replica with the **least work in sight**: its queue plus its **active
conversations** (keys whose latest request came in the last `ACTIVE_WINDOW_S`), then the shortest queue.
Between an agent's turns its conversation is in no queue, yet it comes back within the minute; placed by the
instantaneous backlog alone, conversations that start while the replicas are idle would land where their
hash puts them (8 on two replicas split 4 and 4 only 27% of the time), and share a replica's time from then
on. Ties go to the key's ranking by rendezvous hashing (highest random weight: a hash of the key and the
replica's id, best first), so routers that see the same replicas place a new key alike. A request without a
prompt to reuse (embeddings) goes to the shortest queue.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from serve_app.protocol.chat import AssistantMessage, ChatCompletionRequest, ChatMessage
from serve_app.protocol.completions import CompletionRequest

# A completion prompt's opening: ~256 tokens of text, enough to tell documents apart, short enough that a
# prompt growing at its end keeps its key.
COMPLETION_KEY_CHARS = 1024
COMPLETION_KEY_TOKENS = 256
# A token prompt's size in characters, to compare with text prompts: about what a BPE token spans in English
# text and code.
CHARACTERS_PER_TOKEN = 4
# The routing stat in which an engine replica reports the keys of the requests it ran lately.
HELD_KEYS_STAT = "affinity_keys"
# How many keys a replica reports: more conversations than its prefix cache holds at once on the hardware we
# serve (an agent's 10k-token conversation is ~0.5 GiB of KV for the embedded model in float32, ~1.3 GiB
# for an 8B model in bf16), few enough that a report stays small (16 bytes a key and its size).
HELD_KEYS = 256
# How often Serve asks each engine replica for the keys it holds (and broadcasts them to the routers when they
# changed): a key another router placed is found this late at most, about when an agent's next turn comes.
HELD_KEYS_REPORT_PERIOD_S = 5.0
# How many keys a router remembers where it sent (and, twice as many, how long each prefix was there): a shared
# endpoint's conversations of the last hours.
PLACED_KEYS = 65_536
# The routing stat in which an engine replica reports how many conversations it ran a request of lately.
ACTIVE_STAT = "active_conversations"
# A conversation is active on a replica while its latest request came this recently: longer than an agent's
# tool runs between turns (seconds to a minute), shorter than a user's pause before the next task.
ACTIVE_WINDOW_S = 120.0
# How many requests in flight a router tracks the work of: more than its replicas run at once.
IN_FLIGHT_REQUESTS = 65_536

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Prefix:
    """A part a prompt shares with others, from its start: `key` names it, `size` measures it in characters
    (every size the router compares is the same kind of count, so characters serve as well as tokens)."""

    key: bytes
    size: int


def prompt_prefixes(request: object) -> list[Prefix]:
    """The prefixes of the request's prompt that other prompts share, shortest first; empty when it has none
    to reuse. A chat has two: the **opening** every conversation of an agent shares (its tool schemas and
    system messages), then the **conversation** (the whole prompt, named by its affinity key). A completion
    has one: the document, named by its opening characters.

    Messages count by role, name and text: the extras clients attach and move from turn to turn (Anthropic-style
    `cache_control` marks on the latest messages) must not change a key."""
    if isinstance(request, ChatCompletionRequest):
        tools = [json.dumps(tool.model_dump(), sort_keys=True, default=str) for tool in request.tools or ()]
        system = [message.text() for message in request.messages if message.role in ("system", "developer")]
        opening_size = sum(map(len, tools)) + sum(map(len, system))
        size = sum(map(len, tools)) + sum(_message_size(message) for message in request.messages)
        if isinstance(request.prompt_cache_key, str) and request.prompt_cache_key:
            conversation = _digest("key", request.prompt_cache_key)
        else:
            first = []
            for message in request.messages:
                first += [message.role, message.name or "", message.text()]
                if message.role == "user":
                    break
            conversation = _digest("chat", *tools, "\x00", *first)
        prefixes = [Prefix(_digest("opening", *tools, "\x00", *system), opening_size)] if opening_size else []
        return [*prefixes, Prefix(conversation, size)]
    if isinstance(request, CompletionRequest) and (prompts := request.prompts()):
        first_prompt = prompts[0]
        if isinstance(first_prompt, str):
            return [Prefix(_digest("text", first_prompt[:COMPLETION_KEY_CHARS]), len(first_prompt))]
        tokens = ",".join(map(str, first_prompt[:COMPLETION_KEY_TOKENS]))
        return [Prefix(_digest("tokens", tokens), len(first_prompt) * CHARACTERS_PER_TOKEN)]
    return []


def affinity_key(request: object) -> bytes | None:
    """What stays the same across a conversation's turns (its longest prefix's key); None without a prompt.
    The client's `prompt_cache_key` when it sends one, else the conversation's opening (tools, system prompt,
    first user message), or a completion prompt's first characters."""
    prefixes = prompt_prefixes(request)
    return prefixes[-1].key if prefixes else None


def _message_size(message: ChatMessage) -> int:
    """A message's share of the prompt, in characters: its text, and its tool calls' names and arguments."""
    calls = message.tool_calls or () if isinstance(message, AssistantMessage) else ()
    return len(message.text()) + sum(len(call.function.name) + len(call.function.arguments) for call in calls)


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
    size: int,
    held: Mapping[str, int],
    holders: Sequence[str],
    backlog: Mapping[str, float],
    active: Mapping[str, int],
    recompute_weight: float,
) -> str:
    """The replica that will answer the request soonest, counting what each would compute.

    A request of a conversation some replica holds (`holders`) goes where its **estimated wait** is least: the
    replica's `backlog` (the prompt characters still to compute for the requests it runs) plus what it would
    compute of this prompt (its `size` less the characters the replica `held` of it). Characters a replica
    recomputes because another holds them cost `recompute_weight` × as much: they also delay every request
    behind them there, and leave the conversation's history in two caches. So a turn stays with its holder
    unless the holder is busy past what moving costs, and a conversation moved once can then go to either.

    A new conversation goes to the replica with the least work in sight, its queue plus its active
    conversations, then the shortest queue: placed by the instantaneous backlog alone, conversations starting
    while the replicas are idle would land where their hash puts them (8 on two replicas split 4 and 4 only 27%
    of the time), and the replica they share would be slow for all of them from then on. The key's ranking
    breaks ties."""

    def queue(replica: str) -> int:
        return queue_lengths.get(replica, 0)

    def work_in_sight(replica: str) -> tuple[int, int]:
        # The sum, not the larger: requests without a conversation (a one-off chat has a key of its own) count
        # as active for a while and would otherwise hide a replica's long queue.
        return queue(replica) + active.get(replica, 0), queue(replica)

    if not any(replica in ranked for replica in holders):  # a replica that left holds nothing
        return min(ranked, key=work_in_sight)
    uncached = {replica: max(0, size - held.get(replica, 0)) for replica in ranked}
    least = min(uncached.values())

    def wait(replica: str) -> float:
        return backlog.get(replica, 0.0) + least + recompute_weight * (uncached[replica] - least)

    return min(ranked, key=lambda replica: (wait(replica), *work_in_sight(replica)))


class Backlog:
    """The work of the requests in flight, by replica: each request's characters to compute, counted from
    when it is routed until it completes. At most `capacity` requests are tracked (the oldest is forgotten
    first), so one whose completion never comes cannot grow the table.

    A request counts its whole prompt work until it completes, also while it streams its answer: a router
    learns nothing between. An agent's turns mostly answer with a short tool call."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._requests: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._work: dict[str, float] = {}
        self._count: Counter[str] = Counter()

    def add(self, request_id: str, replica: str, work: float) -> None:
        self.remove(request_id)  # routed again (a retry): counted where it goes now
        self._requests[request_id] = (replica, work)
        self._work[replica] = self._work.get(replica, 0.0) + work
        self._count[replica] += 1
        if len(self._requests) > self._capacity:
            self.remove(next(iter(self._requests)))

    def remove(self, request_id: str) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is not None:
            replica, work = entry
            self._work[replica] -= work
            self._count[replica] -= 1
            if not self._count[replica]:
                del self._work[replica], self._count[replica]

    def work(self, replica: str) -> float:
        return self._work.get(replica, 0.0)

    def count(self, replica: str) -> int:
        return self._count.get(replica, 0)

    def typical(self) -> float | None:
        """A tracked request's mean work: the estimate for requests this router did not send (other routers')."""
        return sum(self._work.values()) / len(self._requests) if self._requests else None


class LatestSizes(Generic[K]):
    """The latest size noted for each key, at most `capacity` keys: the one noted longest ago leaves first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._sizes: OrderedDict[K, int] = OrderedDict()

    def note(self, key: K, size: int) -> None:
        self._sizes[key] = size
        self._sizes.move_to_end(key)
        if len(self._sizes) > self._capacity:
            self._sizes.popitem(last=False)

    def get(self, key: K) -> int:
        return self._sizes.get(key, 0)

    def snapshot(self) -> dict[K, int]:
        return dict(self._sizes)


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

    def recent(self, now: float) -> dict[V, int]:
        """How many of the keys used in the window ending `now` went to each value (where each went last)."""
        self._leave_window(now)
        return dict(self._recent_counts)

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


class EngineReport:
    """What an engine replica reports to the routers (Serve's routing stats, `HELD_KEYS_REPORT_PERIOD_S` apart):
    the prefixes it ran lately, each as long as it was then, and how many conversations it ran a request of in
    the last `ACTIVE_WINDOW_S`. Not thread-safe: notes and reports come from one event loop."""

    def __init__(self) -> None:
        self._held: LatestSizes[bytes] = LatestSizes(HELD_KEYS)
        self._active: LatestKeys[None] = LatestKeys(HELD_KEYS, ACTIVE_WINDOW_S)

    def note(self, prefixes: Sequence[Prefix], now: float) -> None:
        """A request of these prefixes came in: from now on its prompt is in the replica's prefix cache."""
        if not prefixes:
            return
        self._active.note(prefixes[-1].key, None, now)
        for prefix in prefixes:
            self._held.note(prefix.key, prefix.size)

    def stats(self, now: float) -> dict[str, object]:
        return {HELD_KEYS_STAT: self._held.snapshot(), ACTIVE_STAT: sum(self._active.recent(now).values())}
