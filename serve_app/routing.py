"""Which post-processing deployment a chat request passes through; the ingress decides with this.

Requests that need neither go straight to their model's engine deployment and pay for no extra hop.
"""

from __future__ import annotations

from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.tool_constraints import tools_enforced


def needs_tool_parsing(request: ChatCompletionRequest) -> bool:
    return bool(request.tools) and request.tool_choice != "none"


def needs_structured_output(request: ChatCompletionRequest) -> bool:
    """Anything to enforce: a `response_format` other than text, or tool calls that must follow their
    schemas (`required`, a named function, strict tools). The structured-output stage checks it before
    generation (and parses tool calls as well)."""
    response_format = request.response_format
    if response_format is not None and response_format.get("type") != "text":
        return True
    return needs_tool_parsing(request) and tools_enforced(request)
