"""`/v1/chat/completions` wire shapes: the request we accept and the response and chunks we emit.

Responses carry only fields OpenAI's schema defines; the tests validate them against the spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from serve_app.protocol.common import FinishReason, SamplingFields, Usage
from serve_app.protocol.tools import (
    FunctionCallParam,
    FunctionDefinition,
    FunctionTool,
    LegacyFunctionCall,
    ResponseFormat,
    ToolCallParam,
    ToolChoice,
    shape_field,
)


class TextPart(BaseModel):
    # Parts carry extras such as `cache_control`: kept, not refused.
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["text"]
    text: str


class RefusalPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["refusal"]
    refusal: str


class MediaPart(BaseModel):
    """An image, audio or file part: accepted as a shape, refused by text-only models with a clear 400."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["image_url", "input_audio", "file"]


_PART_TAGS = {
    "text": "part-text",
    "refusal": "part-refusal",
    "image_url": "part-media",
    "input_audio": "part-media",
    "file": "part-media",
}


def _part_tag(value: Any) -> str | None:
    return _PART_TAGS.get(shape_field(value, "type") or "")


_PART_TYPES = "content parts have a type: 'text', 'image_url', 'input_audio', 'file' or (assistant) 'refusal'"
UserPart = Annotated[
    Annotated[TextPart, Tag("part-text")] | Annotated[MediaPart, Tag("part-media")],
    Discriminator(_part_tag, custom_error_type="invalid_content_part", custom_error_message=_PART_TYPES),
]
AssistantPart = Annotated[
    Annotated[TextPart, Tag("part-text")] | Annotated[RefusalPart, Tag("part-refusal")],
    Discriminator(_part_tag, custom_error_type="invalid_content_part", custom_error_message=_PART_TYPES),
]


class _Message(BaseModel):
    # Clients attach per-message extras (cache_control, reasoning_details, ...): kept, not refused.
    model_config = ConfigDict(extra="allow", strict=True)

    name: str | None = None
    content: str | list[Any] | None

    def text(self) -> str:
        """The message's text: a string as is, text parts concatenated, null as empty."""
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if isinstance(p, TextPart))
        return self.content or ""

    def media_parts(self) -> list[tuple[int, str]]:
        """(index, type) of the parts that are not text: what a text-only model cannot read."""
        parts = self.content if isinstance(self.content, list) else []
        return [(i, p.type) for i, p in enumerate(parts) if isinstance(p, MediaPart)]


class SystemMessage(_Message):
    role: Literal["system", "developer"]
    content: str | list[TextPart]


class UserMessage(_Message):
    role: Literal["user"]
    content: str | list[UserPart]


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    function_call: FunctionCallParam | None = None  # legacy: the one call of a `functions` turn


class ToolMessage(_Message):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Message):
    """Legacy: the result of a `functions` call."""

    role: Literal["function"]
    name: str
    content: str | None


_ROLE_TAGS = {
    "system": "role-system",
    "developer": "role-system",
    "user": "role-user",
    "assistant": "role-assistant",
    "tool": "role-tool",
    "function": "role-function",
}


def _role_tag(value: Any) -> str | None:
    return _ROLE_TAGS.get(shape_field(value, "role") or "")


ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("role-system")]
    | Annotated[UserMessage, Tag("role-user")]
    | Annotated[AssistantMessage, Tag("role-assistant")]
    | Annotated[ToolMessage, Tag("role-tool")]
    | Annotated[FunctionMessage, Tag("role-function")],
    Discriminator(
        _role_tag,
        custom_error_type="invalid_role",
        custom_error_message="role must be 'system', 'developer', 'user', 'assistant', 'tool' or 'function'",
    ),
]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Typed as OpenAI defines them; tool calling, structured outputs and reasoning give them their meaning.
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    # Legacy function calling: validated as OpenAI defines it, and otherwise ignored (clients use `tools`).
    functions: list[FunctionDefinition] | None = Field(None, min_length=1)
    function_call: LegacyFunctionCall | None = None
    # Defined by OpenAI, accepted and ignored: they change nothing an open model can do.
    audio: Any = None
    metadata: Any = None
    modalities: Any = None
    moderation: Any = None
    prediction: Any = None
    prompt_cache_key: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None
    service_tier: Any = None
    store: Any = None
    verbosity: Any = None
    web_search_options: Any = None

    @field_validator("tool_choice")
    @classmethod
    def _forced_choice_needs_tools(cls, choice: Any, info: ValidationInfo) -> Any:
        """OpenAI refuses a choice that forces a call when there is nothing to call."""
        if choice not in (None, "none", "auto") and not info.data.get("tools"):
            raise ValueError(
                "a tool_choice that forces a call ('required', a named function, allowed_tools) needs tools"
            )
        return choice

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON string, "{}" for no arguments (R3.3)


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    # R6.1: reasoning under both names clients read; absent for answers without reasoning.
    reasoning_content: str | None = None
    reasoning: str | None = None

    @model_serializer(mode="wrap")
    def _optional_only_when_present(self, handler: Any) -> dict[str, Any]:
        data = cast(dict[str, Any], handler(self))
        for key in ("tool_calls", "reasoning_content", "reasoning"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str

    @model_serializer(mode="wrap")
    def _name_only_first(self, handler: Any) -> dict[str, Any]:
        # Later deltas of a call carry `arguments` only, never `"name": ""` or null (R4.5).
        data = cast(dict[str, Any], handler(self))
        if data.get("name") is None:
            data.pop("name", None)
        return data


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta

    @model_serializer(mode="wrap")
    def _id_only_first(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _only_present(self, handler: Any) -> dict[str, Any]:
        # A delta names only what changed: `{"content": "x"}`, never `{"role": null, ...}`.
        return {k: v for k, v in handler(self).items() if v is not None}


class StreamChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    system_fingerprint: str
    usage: Usage | None = None
