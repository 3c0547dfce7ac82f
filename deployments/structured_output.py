"""`StructuredOutput`: owns constraints. Requests with a `response_format` other than text come here.

Before generation it checks the format and compiles the schema (cached per schema in this replica, and
kept off the engine replicas' event loops), refusing what strict mode cannot enforce with a 400. The
engine enforces the constraint while decoding; the answers pass back through here and are post-checked
(JSON parse + jsonschema) before they are reported as a success. Tool calls in the same request are
parsed here too, by the same rendering code as in `ToolParsing`.
"""

from __future__ import annotations

from ray import serve

from deployments.output_stage import OutputStage
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.structured_output import ResponseConstraint, response_constraint


@serve.deployment
class StructuredOutput(OutputStage):
    def constraint(self, request: ChatCompletionRequest) -> ResponseConstraint | None | OpenAIError:
        return response_constraint(request.response_format)
