"""ray.serve.llm's `PrefixCacheAffinityRouter`, on our engine deployments, for `agent_sessions.py` to compare.

It reads the prompt from the routed call's arguments: an object with `messages` (plain dicts) or `prompt`.
Our engine calls carry our pydantic request, whose messages it reads as empty text (and then divides by
that length), so this subclass hands it the text its own normalization would take from the same request
as JSON: every message's content, concatenated. Its routing is unchanged, defaults included.
"""

from __future__ import annotations

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import PrefixCacheAffinityRouter
from ray.serve.request_router import PendingRequest

from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.completions import CompletionRequest


class RayLLMPrefixRouter(PrefixCacheAffinityRouter):
    def _extract_text_from_request(self, pending_request: PendingRequest) -> str:
        request = pending_request.args[0]
        if isinstance(request, ChatCompletionRequest):
            return "".join(message.text() for message in request.messages)
        if isinstance(request, CompletionRequest):
            first = request.prompts()[0]
            return first if isinstance(first, str) else " ".join(map(str, first))
        raise ValueError(f"no prompt in a {type(request).__name__}")
