"""The JSON Schema keyword table (issue #18, R7.1-R7.3), row by row, in every place a schema is enforced:
`response_format` (and the Responses API's `text.format`, which becomes it), and tool parameters under
`tool_choice: "required"`, a named function, and `strict: true` under `auto`. The grammars are compiled as
vLLM compiles them (xgrammar, the model's tokenizer, compact JSON) and read answers character by character,
as the engine's token mask would allow them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serve_app.protocol.chat import ChatCompletionRequest
from serve_app.protocol.errors import OpenAIError
from serve_app.protocol.responses import ResponsesRequest
from serve_app.protocol.tools import FunctionDefinition
from serve_app.responses import Translation, translate
from serve_app.schema_support import ENFORCED_FORMATS
from serve_app.structured_output import ResponseConstraint, arguments_violation, check_constraints, response_constraint
from serve_app.tool_constraints import forced_call_schema, strict_tools_tag
from tests.schema_keywords import ANNOTATION, ANY_OF_THEN_CHECKED, ENFORCED, KEYWORDS, NOT_ENFORCED, Keyword

OTHER_TOOL = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
# An answer in each format the grammar enforces, and one that is not (the table's format rows show one each).
FORMAT_EXAMPLES = {
    "date-time": ("2026-12-01T10:00:00Z", "2026-12-01 at ten"),
    "date": ("2026-12-01", "1 Dec 2026"),
    "time": ("10:00:00Z", "10am"),
    "duration": ("P1DT2H", "one day"),
    "email": ("ada@example.com", "ada"),
    "hostname": ("api.example.com", "api example"),
    "ipv4": ("10.0.0.1", "10.0.0"),
    "ipv6": ("2001:db8::1", "2001:db8:::1:"),
    "uuid": ("123e4567-e89b-12d3-a456-426614174000", "123e4567"),
    "uri": ("https://example.com/a?b=1", "example dot com"),
    "uri-reference": ("/a/b?c=1", "a b"),
    "json-pointer": ("/a/b", "a/b"),
}


@pytest.fixture(scope="module")
def compiler(tokenizer: Any) -> Any:
    import xgrammar

    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer))


def _layouts(value: Any) -> list[str]:
    """The ways an answer may be laid out. Compact JSON is what the grammar allows where the schema
    names the properties; xgrammar 0.2.8 wants `, ` between the members of free-form values."""
    return [json.dumps(value, separators=(",", ":")), json.dumps(value, separators=(", ", ":")), json.dumps(value)]


def _accepts(compiled: Any, text: str, stop_token: int) -> bool:
    import xgrammar

    matcher = xgrammar.GrammarMatcher(compiled)
    return bool(matcher.accept_string(text) and matcher.accept_token(stop_token))


class Placements:
    """Each place a row's schema is enforced, as a grammar and the text an answer `a` makes there."""

    def __init__(self, compiler: Any, tokenizer: Any) -> None:
        self.compiler, self.stop = compiler, tokenizer.eos_token_id

    def json_grammar(self, schema: dict[str, Any]) -> Any:
        # As vLLM compiles JSON constraints with `disable_any_whitespace` (our `compact_json` default).
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))

    def accepted(self, row: Keyword, value: Any) -> dict[str, bool]:
        """Per place: whether some layout of the answer `{"a": value}` gets through the grammar."""
        grammars = {
            "response_format": self.json_grammar(_strict_format(row.schema)),
            "tool_choice required": self.json_grammar(_forced(row.schema, "required")),
            "named function": self.json_grammar(_forced(row.schema, {"type": "function", "function": {"name": "f"}})),
        }
        tag = strict_tools_tag(_request(row.schema, strict=True), "hermes")
        assert isinstance(tag, str)
        grammars["strict under auto"] = self.compiler.compile_structural_tag(tag)
        texts = {
            "response_format": lambda args: args,
            "tool_choice required": lambda args: f'{{"name":"f","arguments":{args}}}',
            "named function": lambda args: f'{{"name":"f","arguments":{args}}}',
            "strict under auto": lambda args: f'<tool_call>\n{{"name": "f", "arguments": {args}}}\n</tool_call>',
        }
        return {
            place: any(_accepts(grammar, texts[place](args), self.stop) for args in _layouts({"a": value}))
            for place, grammar in grammars.items()
        }


@pytest.fixture(scope="module")
def placements(compiler: Any, tokenizer: Any) -> Placements:
    return Placements(compiler, tokenizer)


def _request(schema: dict[str, Any], strict: bool = False, **fields: Any) -> ChatCompletionRequest:
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": schema, "strict": strict}},
        {"type": "function", "function": {"name": "g", "parameters": OTHER_TOOL}},
    ]
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "go"}], "tools": tools, **fields}
    )


def _forced(schema: dict[str, Any], choice: Any) -> dict[str, Any]:
    forced = forced_call_schema(_request(schema, tool_choice=choice))
    assert forced is not None
    if choice == "required":  # the grammar allows either tool: read the answer as a call to `f`
        assert len(forced["anyOf"]) == 2
    return forced


def _strict_format(schema: dict[str, Any]) -> dict[str, Any]:
    constraint = response_constraint(_response_format(schema, strict=True))
    assert isinstance(constraint, ResponseConstraint), constraint
    return constraint.grammar_schema


def _response_format(schema: dict[str, Any], strict: bool) -> Any:
    body = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}
    messages = [{"role": "user", "content": "go"}]
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": messages, "response_format": body}
    ).response_format


def _text_format(schema: dict[str, Any], strict: bool) -> tuple[Translation, ResponseConstraint | OpenAIError | None]:
    """A Responses request's `text.format` as the chat request serving it sees it, and what that makes of it."""
    text = {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": strict}}
    translation = translate(ResponsesRequest.model_validate({"model": "m", "input": "go", "text": text}))
    assert isinstance(translation, Translation), translation
    return translation, response_constraint(translation.chat.response_format)


def _rows(*treatments: str) -> list[Keyword]:
    return [row for row in KEYWORDS if row.treatment in treatments]


@pytest.mark.parametrize("row", _rows(ENFORCED, ANY_OF_THEN_CHECKED), ids=lambda row: row.name)
def test_enforced_keywords_hold_wherever_the_schema_is_placed(placements: Placements, row: Keyword) -> None:
    """The same grammar verdicts in all four places; references resolve wherever the schema is put."""
    for fields in ({"tool_choice": "required"}, {"tool_choice": {"type": "function", "function": {"name": "f"}}}):
        assert check_constraints(_request(row.schema, **fields)) is None
    assert all(placements.accepted(row, row.valid).values()), placements.accepted(row, row.valid)
    _, from_responses = _text_format(row.schema, strict=True)
    assert isinstance(from_responses, ResponseConstraint)
    assert from_responses.grammar_schema == _strict_format(row.schema)  # the same grammar as `response_format`
    if row.treatment == ENFORCED:
        assert not any(placements.accepted(row, row.invalid).values()), placements.accepted(row, row.invalid)


@pytest.mark.parametrize("row", _rows(NOT_ENFORCED, ANNOTATION), ids=lambda row: row.name)
def test_strict_schemas_with_what_the_grammar_does_not_enforce_are_a_400_naming_it(row: Keyword) -> None:
    """R7.2, for tools (forced or strict), a strict `response_format` and a strict `text.format` alike, before
    any token; the Responses API's error names `text.format`."""
    refusals = [
        response_constraint(_response_format(row.schema, strict=True)),
        check_constraints(_request(row.schema, tool_choice="required")),
        check_constraints(_request(row.schema, tool_choice={"type": "function", "function": {"name": "f"}})),
        check_constraints(_request(row.schema, strict=True)),
    ]
    for refusal in refusals:
        assert isinstance(refusal, OpenAIError) and refusal.status_code == 400, refusal
        assert f"'{row.keyword}' (at properties.a)" in refusal.message
    translation, refusal = _text_format(row.schema, strict=True)
    assert isinstance(refusal, OpenAIError) and f"'{row.keyword}' (at properties.a)" in refusal.message
    assert (translation.error(refusal).param or "").startswith("text.format"), translation.error(refusal)


@pytest.mark.parametrize("row", _rows(NOT_ENFORCED, ANNOTATION), ids=lambda row: row.name)
def test_non_strict_response_formats_decode_without_it_and_check_after(
    placements: Placements, compiler: Any, tokenizer: Any, row: Keyword
) -> None:
    constraint = response_constraint(_response_format(row.schema, strict=False))
    assert isinstance(constraint, ResponseConstraint)
    grammar = placements.json_grammar(constraint.grammar_schema)
    assert any(_accepts(grammar, text, tokenizer.eos_token_id) for text in _layouts({"a": row.valid}))
    assert constraint.violation(json.dumps({"a": row.valid})) is None
    if row.treatment == NOT_ENFORCED:
        assert constraint.violation(json.dumps({"a": row.invalid})) is not None
    else:  # an annotation: JSON Schema does not check an unknown format, and neither do we
        assert constraint.grammar_schema["properties"]["a"] == {"type": "string"}


@pytest.mark.parametrize("row", _rows(ANY_OF_THEN_CHECKED), ids=lambda row: row.name)
def test_what_the_grammar_lets_through_is_caught_after(placements: Placements, row: Keyword) -> None:
    """An answer matching more than one `oneOf` alternative passes the grammar; the check after
    generation catches it, in a `response_format` and in an enforced tool's arguments."""
    assert all(placements.accepted(row, row.invalid).values())
    constraint = response_constraint(_response_format(row.schema, strict=True))
    assert isinstance(constraint, ResponseConstraint)
    assert constraint.violation(json.dumps({"a": row.invalid})) is not None
    function = FunctionDefinition.model_validate({"name": "f", "parameters": row.schema})
    assert arguments_violation(function, json.dumps({"a": row.valid})) is None
    refused = arguments_violation(function, json.dumps({"a": row.invalid}))
    assert refused is not None and refused.code == "tool_arguments_violation" and "'f'" in refused.message


@pytest.mark.parametrize("name", sorted(ENFORCED_FORMATS))
def test_every_enforced_format_is_enforced(placements: Placements, tokenizer: Any, name: str) -> None:
    valid, invalid = FORMAT_EXAMPLES[name]
    grammar = placements.json_grammar(_strict_format({"type": "string", "format": name}))
    assert any(_accepts(grammar, text, tokenizer.eos_token_id) for text in _layouts(valid))
    assert not any(_accepts(grammar, text, tokenizer.eos_token_id) for text in _layouts(invalid))
