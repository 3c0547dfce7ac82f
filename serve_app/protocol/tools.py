"""Tool and format wire shapes of a chat request, mirroring OpenAI's schema: `tools`, `tool_choice`,
`response_format`, the legacy `functions`/`function_call`, and the tool calls of assistant messages.

A malformed value fails validation here, as a 400 whose `param` names the place (`tools[0].function`),
before anything downstream reads it. Unions are told apart by their `type` (or, for `tool_choice`, by
being a string), so an error names the one shape the client meant, not every shape it might have meant;
their tags contain a `-`, which the HTTP layer leaves out of `param` paths.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

ANY_OBJECT: dict[str, Any] = {"type": "object"}


class _Shape(BaseModel):
    # Fields OpenAI adds to these shapes later are not ours to refuse; `strict` keeps types exact
    # ("yes" is not a boolean, "1" is not a number), as OpenAI's own validation does.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class FunctionDefinition(_Shape):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @property
    def schema_or_any(self) -> dict[str, Any]:
        """The arguments' JSON Schema; OpenAI reads a missing `parameters` as an empty parameter list."""
        return self.parameters if self.parameters is not None else ANY_OBJECT


class FunctionTool(_Shape):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Shape):
    name: str = Field(min_length=1)


class NamedToolChoice(_Shape):
    type: Literal["function"]
    function: FunctionName


class AllowedTools(_Shape):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice] = Field(min_length=1)


class AllowedToolsChoice(_Shape):
    """OpenAI's `allowed_tools`: the model may call only these of `tools`, under `auto` or `required`."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


def shape_field(value: Any, name: str) -> str | None:
    """A string field of a raw (dict) or already validated shape: what a union's discriminator reads."""
    field = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
    return field if isinstance(field, str) else None


def _tool_choice_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "tool-choice-mode"
    return {"function": "named-function", "allowed_tools": "allowed-tools"}.get(shape_field(value, "type") or "")


ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("tool-choice-mode")]
    | Annotated[NamedToolChoice, Tag("named-function")]
    | Annotated[AllowedToolsChoice, Tag("allowed-tools")],
    Discriminator(
        _tool_choice_tag,
        custom_error_type="invalid_tool_choice",
        custom_error_message=(
            "tool_choice must be 'none', 'auto', 'required', {'type': 'function', 'function': {'name': ...}} "
            "or {'type': 'allowed_tools', 'allowed_tools': {...}}"
        ),
    ),
]


class ResponseFormatText(_Shape):
    type: Literal["text"]


class ResponseFormatJsonObject(_Shape):
    type: Literal["json_object"]


class JsonSchemaFormat(_Shape):
    name: str = Field(min_length=1)
    description: str | None = None
    # `schema` is a BaseModel attribute, hence the alias.
    schema_: dict[str, Any] = Field(default_factory=lambda: dict(ANY_OBJECT), alias="schema")
    strict: bool | None = None


class ResponseFormatJsonSchema(_Shape):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


def _type_tag(prefix: str, known: tuple[str, ...]) -> Any:
    def tag(value: Any) -> str | None:
        kind = shape_field(value, "type")
        return f"{prefix}-{kind}" if kind in known else None

    return tag


ResponseFormat = Annotated[
    Annotated[ResponseFormatText, Tag("format-text")]
    | Annotated[ResponseFormatJsonObject, Tag("format-json_object")]
    | Annotated[ResponseFormatJsonSchema, Tag("format-json_schema")],
    Discriminator(
        _type_tag("format", ("text", "json_object", "json_schema")),
        custom_error_type="invalid_response_format",
        custom_error_message="response_format.type must be 'text', 'json_object' or 'json_schema'",
    ),
]


class FunctionCallParam(_Shape):
    """A call as clients send it back in the conversation; `arguments` is the JSON text the model wrote."""

    name: str
    arguments: str


class ToolCallParam(_Shape):
    id: str
    type: Literal["function"]
    function: FunctionCallParam


LegacyFunctionCall = Literal["none", "auto"] | FunctionName
