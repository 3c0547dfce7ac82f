"""Which engine replica should take a request: the one most likely to hold its prompt's prefix in its cache.

An agent's conversation grows by a tool result per turn; each turn's prompt begins with the whole previous
turn's. vLLM keeps the KV of prompts it computed (its prefix cache), per replica: a turn that lands where the
previous one ran computes only what is new (Cline's second turn: 5.4 s instead of 70 s on a CPU). Serve's
default router picks the shorter of two random queues and scatters a conversation over the replicas.

So a request is routed by its **affinity key**, what stays the same across a conversation's turns: the
client's `prompt_cache_key` when it sends one (Codex does: its conversation id), else the conversation's
opening (tools, system prompt, first user message), or a completion prompt's first characters. The replicas
are ranked for the key by rendezvous hashing (highest random weight): each replica's score is a hash of the
key and the replica's id, and the best score wins. Nothing is remembered: every router (each ingress replica,
each post-processing deployment) ranks alike, a restarted router ranks as before, and a replica that joins
or leaves moves only the keys it wins or held.

Load comes first when it must (consistent hashing with bounded loads, Mirrokni et al., 2018): a replica takes
a request only while its queue is under `max_load_factor` × the average queue (counting the request),
rounded up; otherwise the request goes to the next replica in the key's ranking. A request without a key
(embeddings) goes to the shortest queue.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence

from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.completions import CompletionRequest

# A completion prompt's opening: ~256 tokens of text, enough to tell documents apart, short enough that a
# prompt growing at its end keeps its key.
COMPLETION_KEY_CHARS = 1024
COMPLETION_KEY_TOKENS = 256


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


def choose(ranked: Sequence[str], queue_lengths: Mapping[str, int], max_load_factor: float) -> str:
    """The first replica of the ranking whose queue is under the bound: `max_load_factor` × the average queue
    once this request is counted, rounded up (so at least 1: an idle replica always qualifies)."""
    total = sum(queue_lengths.get(replica, 0) for replica in ranked) + 1
    bound = math.ceil(max_load_factor * total / len(ranked))
    # With max_load_factor >= 1 the shortest queue is under the bound: some replica always qualifies.
    return next(replica for replica in ranked if queue_lengths.get(replica, 0) < bound)
