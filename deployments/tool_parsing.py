"""`ToolParsing`: turns an engine's text into content and tool-call deltas, between engine and ingress.

Requests with tools (and no `response_format`) come here; the rest skip this hop.
"""

from __future__ import annotations

from ray import serve

from deployments.output_stage import OutputStage


@serve.deployment
class ToolParsing(OutputStage):
    """Per-request parser state lives here (`render_stream` builds one machine per choice)."""
