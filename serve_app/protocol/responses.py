"""`/v1/responses` wire shapes (OpenAI's Responses API, R9): the request we accept, the `response` object
and the output items we emit. `serve_app/responses.py` translates a request into a chat request; the
Responses shape of the answer is rendered by `serve_app/responses_output.py`.

Input items and tools are told apart by `type`; the ones this server cannot serve are accepted as shapes
(hosted tools are ignored, unknown input items refused with a 400 naming them) rather than failing as
"not any of these shapes".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_serializer

from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.tools import shape_field


class _Shape(BaseModel):
    # Fields OpenAI adds later (and per-item extras such as Codex's `id`s) are not ours to refuse; types are
    # exact, as OpenAI checks them.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


# --- input ------------------------------------------------------------------------------------------


class TextInputPart(_Shape):
    type: Literal["input_text", "output_text"]
    text: str


class RefusalInputPart(_Shape):
    type: Literal["refusal"]
    refusal: str


class MediaInputPart(_Shape):
    """An image, file or audio part: accepted as a shape, refused with a 400 naming it (the models served
    here read text)."""

    type: Literal["input_image", "input_file", "input_audio"]


_PART_TYPES = {
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
    "input_image": "media",
    "input_file": "media",
    "input_audio": "media",
}
InputPart = Annotated[
    Annotated[TextInputPart, Tag("part-text")]
    | Annotated[RefusalInputPart, Tag("part-refusal")]
    | Annotated[MediaInputPart, Tag("part-media")],
    Discriminator(
        lambda value: f"part-{_PART_TYPES.get(shape_field(value, 'type') or '')}",
        custom_error_type="invalid_content_part",
        custom_error_message="content parts have a type: 'input_text', 'output_text', 'refusal', 'input_image', "
        "'input_file' or 'input_audio'",
    ),
]


class MessageItem(_Shape):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart]


class FunctionCallItem(_Shape):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class CustomToolCallItem(_Shape):
    type: Literal["custom_tool_call"]
    call_id: str
    name: str
    input: str


class ToolOutputItem(_Shape):
    """A function's or a custom tool's result, sent back by the client."""

    type: Literal["function_call_output", "custom_tool_call_output"]
    call_id: str
    output: str | list[InputPart]


class ReasoningText(_Shape):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Shape):
    """Reasoning the model produced earlier, sent back by the client (Codex sends every item back)."""

    type: Literal["reasoning"]
    summary: list[ReasoningText] = []
    content: list[ReasoningText] | None = None


class OtherItem(_Shape):
    """An item this server cannot take (`item_reference`, a hosted tool's call, ...): refused by name."""

    type: str = "item_reference"  # OpenAI's item reference may leave out its type


_ITEM_TAGS = {
    "message": "message",
    "function_call": "function_call",
    "custom_tool_call": "custom_tool_call",
    "function_call_output": "tool_output",
    "custom_tool_call_output": "tool_output",
    "reasoning": "reasoning",
}


def _item_tag(value: Any) -> str:
    kind = shape_field(value, "type")
    if kind is None:  # OpenAI's "easy" message: a role and content, no type; or a reference to an item
        return "item-message" if shape_field(value, "role") is not None else "item-other"
    return f"item-{_ITEM_TAGS.get(kind, 'other')}"


InputItem = Annotated[
    Annotated[MessageItem, Tag("item-message")]
    | Annotated[FunctionCallItem, Tag("item-function_call")]
    | Annotated[CustomToolCallItem, Tag("item-custom_tool_call")]
    | Annotated[ToolOutputItem, Tag("item-tool_output")]
    | Annotated[ReasoningItem, Tag("item-reasoning")]
    | Annotated[OtherItem, Tag("item-other")],
    Discriminator(_item_tag),
]


# --- tools ------------------------------------------------------------------------------------------


class FunctionToolParam(_Shape):
    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomToolParam(_Shape):
    """A freeform tool: the model writes its input as plain text (Codex's `apply_patch`)."""

    type: Literal["custom"]
    name: str = Field(min_length=1)
    description: str | None = None
    format: dict[str, Any] | None = None  # {"type": "text"} or {"type": "grammar", "syntax", "definition"}


class NamespaceToolParam(_Shape):
    """A named group of the client's own tools (Codex's `multi_agent_v1`); its calls name the namespace."""

    type: Literal["namespace"]
    name: str = Field(min_length=1)
    description: str | None = None
    tools: list[Annotated[FunctionToolParam | CustomToolParam, Field(discriminator="type")]]


class HostedToolParam(_Shape):
    """A tool OpenAI runs on its side (`web_search`, `file_search`, ...): nothing here can run it."""

    type: str


_TOOL_TAGS = {"function": "function", "custom": "custom", "namespace": "namespace"}
ToolParam = Annotated[
    Annotated[FunctionToolParam, Tag("tool-function")]
    | Annotated[CustomToolParam, Tag("tool-custom")]
    | Annotated[NamespaceToolParam, Tag("tool-namespace")]
    | Annotated[HostedToolParam, Tag("tool-hosted")],
    Discriminator(lambda value: f"tool-{_TOOL_TAGS.get(shape_field(value, 'type') or '', 'hosted')}"),
]


class NamedChoice(_Shape):
    type: Literal["function", "custom"]
    name: str = Field(min_length=1)


class AllowedToolsChoice(_Shape):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]] = Field(min_length=1)


class HostedChoice(_Shape):
    """A choice of a hosted tool (`{"type": "web_search_preview"}`, ...): served as `auto`."""

    type: str


def _choice_tag(value: Any) -> str:
    if isinstance(value, str):
        return "choice-mode"
    kind = shape_field(value, "type")
    return {"function": "choice-named", "custom": "choice-named", "allowed_tools": "choice-allowed"}.get(
        kind or "", "choice-hosted"
    )


ToolChoiceParam = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("choice-mode")]
    | Annotated[NamedChoice, Tag("choice-named")]
    | Annotated[AllowedToolsChoice, Tag("choice-allowed")]
    | Annotated[HostedChoice, Tag("choice-hosted")],
    Discriminator(_choice_tag),
]


# --- text format and reasoning ---------------------------------------------------------------------


class TextFormatText(_Shape):
    type: Literal["text"]


class TextFormatJsonObject(_Shape):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Shape):
    type: Literal["json_schema"]
    name: str = Field(min_length=1)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


TextFormat = Annotated[
    TextFormatText | TextFormatJsonObject | TextFormatJsonSchema,
    Field(discriminator="type"),
]


class TextParam(_Shape):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(_Shape):
    effort: str | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


# --- the request ------------------------------------------------------------------------------------


class ResponsesRequest(BaseModel):
    # Unknown fields are accepted and logged (refused in strict mode), as for chat (R2.1): Codex sends
    # `client_metadata`, which OpenAI's schema does not define.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    max_output_tokens: int | None = Field(None, ge=16)  # OpenAI's minimum
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool | None = False
    metadata: dict[str, str] | None = None
    # State kept on OpenAI's side: refused by name when set (`serve_app/responses.py`), as nothing is stored.
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    prompt: Any = None
    # Defined by OpenAI, accepted; echoed in the response where OpenAI's `response` object has them.
    store: bool | None = None
    include: list[str] | None = None
    stream_options: Any = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Any = None
    prompt_cache_options: Any = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    context_management: Any = None
    moderation: Any = None


# --- the response -----------------------------------------------------------------------------------


class ResponseSettings(BaseModel):
    """The request's settings as the `response` object reports them (OpenAI echoes them): computed once at
    the ingress, carried to the renderer as plain data."""

    instructions: str | None
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    metadata: dict[str, str]
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    previous_response_id: None = None
    reasoning: dict[str, Any]
    text: dict[str, Any]
    truncation: Literal["auto", "disabled"]
    background: bool = False
    service_tier: str
    top_logprobs: int
    prompt_cache_key: str | None
    safety_identifier: str | None
    user: str | None = None

    @model_serializer(mode="wrap")
    def _user_only_when_given(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("user") is None:  # OpenAI's schema allows a string, not null
            data.pop("user", None)
        return data


class ResponsesShape(BaseModel):
    """What rendering an answer in the Responses shape needs beyond the chat answer."""

    settings: ResponseSettings
    custom_tools: frozenset[str] = frozenset()  # functions that stand for custom tools: `custom_tool_call`s
    namespaces: dict[str, str] = {}  # the namespace of each function that belongs to one


class ChatFromResponses(ChatCompletionRequest):
    """A `/v1/responses` request as the chat request that serves it (`serve_app/responses.py`)."""

    responses: ResponsesShape


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class ReasoningTextPart(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputTextPart]


class OutputReasoning(BaseModel):
    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[Any] = []
    content: list[ReasoningTextPart]
    status: ItemStatus


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus
    namespace: str | None = None

    @model_serializer(mode="wrap")
    def _namespace_only_when_set(self, handler: Any) -> dict[str, Any]:
        return _without_null_namespace(handler(self))


def _without_null_namespace(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("namespace") is None:  # OpenAI's schema allows a string, not null
        data.pop("namespace", None)
    return data


class OutputCustomToolCall(BaseModel):
    # OpenAI's custom tool call has no `status`.
    id: str
    type: Literal["custom_tool_call"] = "custom_tool_call"
    call_id: str
    name: str
    input: str
    namespace: str | None = None

    @model_serializer(mode="wrap")
    def _namespace_only_when_set(self, handler: Any) -> dict[str, Any]:
        return _without_null_namespace(handler(self))


OutputItem = OutputMessage | OutputReasoning | OutputFunctionCall | OutputCustomToolCall


class InputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(BaseModel):
    # OpenAI's codes (`server_error`, `rate_limit_exceeded`, ...), or a client's mistake found after the stream
    # started under its own code (`context_length_exceeded`, which Codex tells its user about instead of retrying).
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]
