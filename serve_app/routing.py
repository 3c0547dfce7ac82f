"""Where a request goes; the ingress decides with this. `ModelCatalog` resolves the `model` a client
sent (an id or an alias) to the engine deployment of a model that serves that endpoint; the `needs_*`
tests pick the post-processing deployment a chat request passes through. Requests that need neither go
straight to their model's engine deployment and pay for no extra hop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serve_app.config import ModelTask
from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError, invalid_request, model_not_found
from serve_app.tool_constraints import tools_enforced

if TYPE_CHECKING:
    from serve_app.config import ModelConfig

ENDPOINTS: dict[ModelTask, str] = {"generate": "/v1/chat/completions and /v1/completions", "embed": "/v1/embeddings"}


@dataclass(frozen=True)
class ModelCatalog:
    """The names clients may send as `model` (ids and aliases) and what each model serves."""

    tasks: dict[str, ModelTask]  # model id -> its task
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> model id
    # Context windows the config states, so `/v1/models` need not ask an engine for them.
    context_lengths: dict[str, int] = field(default_factory=dict)
    # Models that may have no replica: never asked by `/v1/models`, which would start one and wait for it.
    may_scale_to_zero: frozenset[str] = frozenset()

    @classmethod
    def of(cls, models: list[ModelConfig]) -> ModelCatalog:
        return cls(
            tasks={m.id: m.task for m in models},
            aliases={alias: m.id for m in models for alias in m.aliases},
            context_lengths={m.id: length for m in models if (length := m.configured_context_length) is not None},
            may_scale_to_zero=frozenset(
                m.id for m in models if m.deployment.autoscaling and m.deployment.autoscaling.min_replicas == 0
            ),
        )

    def names(self) -> list[str]:
        """What `/v1/models` lists: every id, then every alias."""
        return [*self.tasks, *self.aliases]

    def model_id(self, name: str) -> str | None:
        return name if name in self.tasks else self.aliases.get(name)

    def resolve(self, name: str, task: ModelTask) -> str | OpenAIError:
        """The id of the model `name` stands for, if it serves `task`'s endpoints."""
        model_id = self.model_id(name)
        if model_id is None:
            return model_not_found(name)
        if self.tasks[model_id] != task:
            return invalid_request(
                f"The model '{name}' serves {ENDPOINTS[self.tasks[model_id]]}, not {ENDPOINTS[task]}. "
                "GET /v1/models lists the served models.",
                param="model",
                code="model_not_supported",
            )
        return model_id


def needs_tool_parsing(request: ChatCompletionRequest) -> bool:
    return bool(request.tools) and request.tool_choice != "none"


def needs_structured_output(request: ChatCompletionRequest) -> bool:
    """Anything to enforce: a `response_format` other than text, or tool calls that must follow their
    schemas (`required`, a named function, strict tools). The structured-output stage checks it before
    generation (and parses tool calls as well)."""
    if request.response_format is not None and request.response_format.type != "text":
        return True
    return needs_tool_parsing(request) and tools_enforced(request)
