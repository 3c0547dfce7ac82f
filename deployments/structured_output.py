"""`StructuredOutput`: owns constraints. Requests with something to enforce come here: a `response_format`
other than text, or tool calls that must follow their schemas (`required`, a named function, strict tools).

Before generation it checks every such schema and compiles it (cached per schema in this replica, and
kept off the engine replicas' event loops), refusing what cannot be enforced with a 400 naming the
keyword. The engine enforces the constraint while decoding; the answers pass back through here and are
post-checked (JSON parse + jsonschema) before they are reported as a success. Tool calls are parsed
here too, by the same rendering code as in `ToolParsing`.
"""

from __future__ import annotations

from ray import serve

from deployments.output_stage import OutputStage
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.structured_output import ResponseConstraint, check_constraints


@serve.deployment
class StructuredOutput(OutputStage):
    def constraint(self, request: ChatCompletionRequest) -> ResponseConstraint | None | OpenAIError:
        return check_constraints(request)
