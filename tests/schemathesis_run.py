"""Schemathesis against a live server: requests generated from OpenAI's published OpenAPI spec, every
answer checked against the same spec (R5: no 5xx, no hung connection, only documented shapes).

Pure: no Ray, no vLLM; `run()` takes the server's base URL (ending in /v1, as the spec's paths have no
/v1) and the ids it serves. The spec is loaded as published and adapted in memory (`_adapted_spec`):

- `model` is pinned to the served ids: left to the spec, nearly every request would only get 404
  model_not_found and never reach an engine.
- What OpenAI answers but its spec leaves out, or describes too strictly, is documented: 4XX responses
  (the error envelope every OpenAI error has); text/event-stream for streamed text completions (with
  `finish_reason: null` until a choice ends, as OpenAI sends it); error events inside streams (R4.8;
  the SDKs raise them); base64 embeddings (`encoding_format: base64` is in the request schema, the
  `Embedding` schema has only the float list).

The checks, each failing the run: `not_a_server_error`, `status_code_conformance`,
`content_type_conformance`, `response_schema_conformance` (every stream chunk too, through the SSE
deserializer registered below), `response_headers_conformance`, `openai_fields_only` (ours: R3.6, no
fields OpenAI does not define, as tests/openai_spec.py checks them), no error event in a 200 stream, and
a per-request timeout (a hung connection, or a stream that does not end in time). One exception, on
replay models only: see UNENFORCED_CODES.

Not used: `positive_data_acceptance` and `negative_data_rejection`. The server refuses spec-valid
requests it does not support (image parts, `suffix`, 1.0 as an integer, ...) and accepts some
spec-invalid ones (unknown fields are ignored, auth headers are not checked without keys), both by
design (docs/compatibility.md); the summary counts both (`refused`, `negative_accepted`) instead. The
other built-in checks (`ignored_auth`, `use_after_free`, ...) are about auth and stateful resources these
endpoints do not have.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import struct
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.openai_spec import assert_valid, reference_dir
from tests.sse_client import parse_sse

CHAT, COMPLETIONS, EMBEDDINGS, LIST_MODELS, RETRIEVE_MODEL = (
    "createChatCompletion",
    "createCompletion",
    "createEmbedding",
    "listModels",
    "retrieveModel",
)
ALL_OPERATIONS = (CHAT, COMPLETIONS, EMBEDDINGS, LIST_MODELS, RETRIEVE_MODEL)
GENERATION_OPERATIONS = (CHAT, COMPLETIONS)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# A model card's `max_model_len` is the one field we add to OpenAI's `Model` (vLLM sends it too; agent
# clients size their context by it); tests/integration/test_wire_contract.py checks it.
MODEL_CARD_EXTRAS = ("max_model_len",)
# An answer that breaks `response_format` or an enforced tool's parameters is a 500 with one of these codes,
# or an error event once streaming, by design (R7.1, R7.3, serve_app/structured_output.py). vLLM's grammar
# rules them out (answers cut by max_tokens are exempt); the replay engine plays its script whatever the
# request says, so on replay models (run with follows_grammar=False) exactly these errors are counted
# (`unenforced`) instead of failed.
UNENFORCED_CODES = ("response_format_violation", "tool_arguments_violation")


def _json_response(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}


def _stream_of(schema_name: str) -> dict[str, Any]:
    """An SSE event's data: the chunk, or an error event once the stream has started (R4.8)."""
    chunk = {"$ref": f"#/components/schemas/{schema_name}"}
    return {"schema": {"anyOf": [chunk, {"$ref": "#/components/schemas/ErrorResponse"}]}}


@functools.cache
def _published_spec() -> dict[str, Any]:
    with open(reference_dir() / "openai-openapi" / "openapi.yaml") as f:
        return cast(dict[str, Any], yaml.load(f, Loader=yaml.CSafeLoader))


def _request_schema(spec: dict[str, Any], operation_id: str) -> dict[str, Any]:
    for path_item in spec["paths"].values():
        for operation in path_item.values():
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                return cast(dict[str, Any], spec["components"]["schemas"][ref.rsplit("/", 1)[1]])
    raise KeyError(operation_id)


def _adapted_spec(generation_model: str, embedding_model: str) -> dict[str, Any]:
    spec = copy.deepcopy(_published_spec())
    schemas = spec["components"]["schemas"]
    # `model` pinned: the request schemas (or one of their allOf parts) define it as any string.
    for operation_id, model in (
        (CHAT, generation_model),
        (COMPLETIONS, generation_model),
        (EMBEDDINGS, embedding_model),
    ):
        request = _request_schema(spec, operation_id)
        parts = [p for p in [request, *request.get("allOf", [])] if "model" in p.get("properties", {})]
        assert parts, f"no `model` in {operation_id}'s request schema"
        for part in parts:
            part["properties"]["model"] = {"type": "string", "enum": [model]}
    # GET /models/{model}: positive cases ask for the served ids; negative ones for any other string (404).
    (parameter,) = spec["paths"]["/models/{model}"]["get"]["parameters"]
    parameter["schema"] = {"type": "string", "enum": [generation_model, embedding_model]}
    # Streamed text completions: OpenAI's spec gives them the response's shape (its note says so) but no
    # text/event-stream entry; OpenAI sends `finish_reason: null` until a choice ends.
    stream_chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish_reason = stream_chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    finish_reason["nullable"] = True
    schemas["CreateCompletionStreamResponse"] = stream_chunk
    # `encoding_format: base64` is in the request schema, but `Embedding` documents only the float list;
    # OpenAI (and we) then send the little-endian float32 bytes in base64, which the SDKs decode.
    embedding = schemas["Embedding"]["properties"]
    embedding["embedding"] = {"anyOf": [embedding["embedding"], {"type": "string", "contentEncoding": "base64"}]}
    for path, method in (
        ("/chat/completions", "post"),
        ("/completions", "post"),
        ("/embeddings", "post"),
        ("/models", "get"),
        ("/models/{model}", "get"),
    ):
        responses = spec["paths"][path][method]["responses"]
        # OpenAI documents only 200 (and 429) although its API answers 400/401/404/... with this envelope.
        responses["4XX"] = {"description": "The error envelope", "content": _json_response("ErrorResponse")}
    chat_ok = spec["paths"]["/chat/completions"]["post"]["responses"]["200"]["content"]
    chat_ok["text/event-stream"] = _stream_of("CreateChatCompletionStreamResponse")
    spec["paths"]["/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"] = _stream_of(
        "CreateCompletionStreamResponse"
    )
    return spec


@schemathesis.deserializer("text/event-stream")
def _openai_sse(_ctx: schemathesis.DeserializationContext, response: schemathesis.Response) -> list[Any]:
    """OpenAI's streams as its spec describes them: each event's data is one JSON chunk validated
    against the documented schema, the stream ends with `data: [DONE]` (not JSON, not a chunk).
    (Schemathesis reads a 3.1 spec's SSE `schema` as the schema of the event object {data, event,
    ...} itself, which no OpenAI chunk is.)"""
    return parse_sse(response.content)


def _closed_valid(chunk_or_body: Any, schema_name: str) -> None:
    if isinstance(chunk_or_body, dict) and "error" in chunk_or_body:
        schema_name = "ErrorResponse"
    assert_valid(chunk_or_body, schema_name)


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """base64 vectors decoded: they must be whole float32s (the float list is what the schema checks)."""
    data = []
    for item in body.get("data", []):
        if isinstance(item, dict) and isinstance(item.get("embedding"), str):
            raw = base64.b64decode(item["embedding"], validate=True)
            assert len(raw) % 4 == 0, f"base64 embedding of {len(raw)} bytes is no float32 vector"
            item = {**item, "embedding": list(struct.unpack(f"<{len(raw) // 4}f", raw))}
        data.append(item)
    return {**body, "data": data}


def _card(card: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in card.items() if key not in MODEL_CARD_EXTRAS}


def _completion_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    if "error" in chunk:
        return chunk
    chunk = copy.deepcopy(chunk)
    for choice in chunk.get("choices", []):
        if isinstance(choice, dict) and choice.get("finish_reason", "stop") is None:
            choice["finish_reason"] = "stop"  # streamed: null until the choice ends (see _adapted_spec)
    return chunk


def openai_fields_only(ctx: CheckContext, response: schemathesis.Response, case: Case) -> bool | None:
    """R3.6: bodies and chunks hold only fields OpenAI's schemas define (the spec's objects are open)."""
    try:
        _openai_fields_only(response, case)
    except AssertionError:
        raise
    except Exception as exc:  # not JSON, not UTF-8, not base64: a failure of this check, not of the run
        raise AssertionError(f"unreadable response: {type(exc).__name__}: {exc}") from exc
    return None


def _openai_fields_only(response: schemathesis.Response, case: Case) -> None:
    content_type = _content_type(response)
    if response.status_code >= 400:
        _closed_valid(response.json(), "ErrorResponse")
        return
    operation_id = case.operation.definition.raw.get("operationId")
    if content_type.startswith("text/event-stream"):
        for chunk in parse_sse(response.content):
            if operation_id == CHAT:
                _closed_valid(chunk, "CreateChatCompletionStreamResponse")
            else:
                _closed_valid(_completion_chunk(chunk), "CreateCompletionResponse")
        return
    body = response.json()
    if operation_id == LIST_MODELS:
        _closed_valid({**body, "data": [_card(card) for card in body.get("data", [])]}, "ListModelsResponse")
    elif operation_id == RETRIEVE_MODEL:
        _closed_valid(_card(body), "Model")
    elif operation_id == EMBEDDINGS:
        _closed_valid(_embeddings(body), "CreateEmbeddingResponse")
    else:
        _closed_valid(body, "CreateChatCompletionResponse" if operation_id == CHAT else "CreateCompletionResponse")


CHECKS: list[schemathesis.CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    openai_fields_only,
]


@dataclass(frozen=True)
class Failure:
    operation: str
    mode: str
    status: int | None  # None: no answer (timeout, reset connection)
    message: str
    reproducer: str  # a curl command line

    def __str__(self) -> str:
        return f"{self.operation} [{self.mode}] -> {self.status}: {self.message[:2000]}\n  {self.reproducer[:3000]}"


@dataclass
class Summary:
    cases: Counter[str] = field(default_factory=Counter)  # "POST /chat/completions [positive]" -> n
    statuses: Counter[str] = field(default_factory=Counter)  # "POST /chat/completions 200" -> n
    streamed: int = 0  # 2xx answers that were SSE streams
    server_errors: int = 0  # 5xx answers and streams with error events (each also a failure)
    # 500 response_format_violation from an engine that cannot follow a grammar (see UNENFORCED_CODES).
    unenforced: int = 0
    negative_accepted: int = 0  # schema-invalid requests answered 2xx (lenient by design; counted only)
    # Spec-valid requests refused (4xx), by the `param` the error names: unsupported features, stricter
    # types (1.0 is no integer here) and OpenAI's own cross-field rules. Counted, not failed.
    refused: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    seed: int | None = None

    def __add__(self, other: Summary) -> Summary:
        return Summary(
            self.cases + other.cases,
            self.statuses + other.statuses,
            self.streamed + other.streamed,
            self.server_errors + other.server_errors,
            self.unenforced + other.unenforced,
            self.negative_accepted + other.negative_accepted,
            self.refused + other.refused,
            self.failures + other.failures,
            self.seconds + other.seconds,
            self.seed if self.seed is not None else other.seed,
        )

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def report(self) -> str:
        operations = sorted({key.rsplit(" [", 1)[0] for key in self.cases})
        lines = [
            f"schemathesis: {self.total} cases over {len(operations)} operations in {self.seconds:.1f}s "
            f"(seed {self.seed}); {self.streamed} streamed; {self.server_errors} server errors (5xx or error "
            f"events); {len(self.failures)} failures",
            f"  {self.negative_accepted} schema-invalid requests answered 2xx; {self.unenforced} "
            "answers the replay engine could not constrain (500 response_format_violation or tool_arguments_violation)",
        ]
        lines += [f"  {key}: {n} cases" for key, n in sorted(self.cases.items())]
        lines += [f"  {key}: {n}" for key, n in sorted(self.statuses.items())]
        lines += [f"  spec-valid but refused: {key}: {n}" for key, n in self.refused.most_common(12)]
        lines += [f"  FAILED {failure}" for failure in self.failures]
        return "\n".join(lines)

    def assert_ok(self) -> None:
        assert self.total > 0, "no cases ran"
        assert not self.failures, f"{len(self.failures)} failures:\n{self.report()}"


def _content_type(response: schemathesis.Response) -> str:
    return response.headers.get("content-type", [""])[0]


def _server_side_errors(response: schemathesis.Response) -> list[Any]:
    """The error of a 5xx, or those of the error events in a 2xx stream (R4.8: what a 5xx becomes once
    the stream has started). Empty for anything else."""
    streamed = response.status_code < 300 and _content_type(response).startswith("text/event-stream")
    try:
        if response.status_code >= 500:
            return [response.json()["error"]]
        if streamed:
            return [chunk["error"] for chunk in parse_sse(response.content) if "error" in chunk]
    except Exception:  # not the envelope, or a broken stream: the checks report it
        return [] if streamed else [None]
    return []


def _error_param(response: schemathesis.Response) -> str:
    try:
        error = response.json()["error"]
        return re.sub(r"\[\d+\]", "[]", error.get("param") or error.get("code") or "-")
    except Exception:
        return "(not the error envelope)"


def _capped_body(operation_id: str, body: Any, max_tokens: int) -> Any:
    """A budget for slow engines (vLLM on CPU): short answers, one choice. Stays valid for the spec."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    keys = ("max_tokens", "max_completion_tokens") if operation_id == CHAT else ("max_tokens",)
    for key in keys:
        value = body.get(key)
        fits = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= max_tokens
        body[key] = value if fits else max_tokens
    body["n"] = 1
    body.pop("best_of", None)
    return body


def load_schema(
    base_url: str,
    generation_model: str,
    embedding_model: str,
    *,
    operations: Sequence[str] = ALL_OPERATIONS,
    timeout_s: float = 60.0,
    max_tokens: int | None = None,
) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "base-url": base_url,
            "request-timeout": timeout_s,
            # Read whole streams (the default stops after 20 events); `request-timeout` still bounds them.
            "max-stream-events": 1_000_000,
        }
    )
    spec = _adapted_spec(generation_model, embedding_model)
    schema = schemathesis.openapi.from_dict(spec, config=config).include(operation_id=list(operations))

    def generates(ctx: schemathesis.HookContext) -> str | None:
        operation = ctx.operation
        operation_id = operation.definition.raw.get("operationId") if operation is not None else None
        return operation_id if operation_id in GENERATION_OPERATIONS else None

    @schema.hook
    def flatmap_body(ctx: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
        # Left to the spec, 1 request in 100 streams (`stream` is one optional field of dozens); half do
        # here. Only where the body leaves `stream` unset or null, so negative cases keep their mutation.
        if generates(ctx) and isinstance(body, dict) and body.get("stream") is None:
            return st.sampled_from([body, {**body, "stream": True}])
        return st.just(body)

    if max_tokens is not None:
        cap = max_tokens

        @schema.hook
        def map_body(ctx: schemathesis.HookContext, body: Any) -> Any:
            operation_id = generates(ctx)
            return _capped_body(operation_id, body, cap) if operation_id is not None else body

    return schema


def _run_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    max_examples: int,
    timeout_s: float,
    run_seed: int,
    follows_grammar: bool,
    summary: Summary,
) -> None:
    label = operation.label

    @seed(run_seed)
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # failures are collected, not raised: no shrinking against a live server
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Case) -> None:
        summary.cases[f"{label} [{mode.value}]"] += 1
        try:
            response = case.call(timeout=timeout_s)
        except Exception as exc:  # a timeout, a reset connection: no answer at all
            failure = Failure(label, mode.value, None, f"{type(exc).__name__}: {exc}", case.as_curl_command())
            summary.failures.append(failure)
            return
        summary.statuses[f"{label} {response.status_code}"] += 1
        if response.status_code < 300:
            summary.streamed += _content_type(response).startswith("text/event-stream")
            summary.negative_accepted += mode == GenerationMode.NEGATIVE
        elif mode == GenerationMode.POSITIVE and 400 <= response.status_code < 500:
            summary.refused[f"{label} {response.status_code} {_error_param(response)}"] += 1
        problems = []
        errors = _server_side_errors(response)
        unenforced = (
            bool(errors)
            and not follows_grammar
            and all(isinstance(e, dict) and e.get("code") in UNENFORCED_CODES for e in errors)
        )
        summary.unenforced += unenforced
        summary.server_errors += bool(errors) and not unenforced
        if errors and not unenforced and response.status_code < 300:
            problems.append(f"error events in a {response.status_code} stream (a server error, R4.8): {errors}")
        if response.stream_cut_short:
            problems.append(f"the stream did not end within {timeout_s}s")
        # A tolerated 500 (see UNENFORCED_CODES) must still be the envelope, with only OpenAI's fields.
        checks: list[schemathesis.CheckFunction] = (
            [openai_fields_only] if unenforced and response.status_code >= 500 else CHECKS
        )
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as failures:  # its message lists every failed check, with a curl reproducer
            problems.append(str(failures))
        if problems:
            body = response.content[:2000].decode(errors="replace")
            message = "\n".join(problems) + f"\n  response body: {body}"
            summary.failures.append(Failure(label, mode.value, response.status_code, message, case.as_curl_command()))

    send()


def run(
    base_url: str,
    generation_model: str,
    embedding_model: str,
    *,
    operations: Iterable[str] = ALL_OPERATIONS,
    modes: Iterable[GenerationMode] = MODES,
    max_examples: int = 25,
    timeout_s: float = 60.0,
    max_tokens: int | None = None,
    run_seed: int | None = None,
    follows_grammar: bool = True,
) -> Summary:
    """`max_examples` cases per operation and mode (fewer where the spec allows fewer, as GET /models).
    `max_tokens`: cap generated answers (and one choice per request) for slow engines.
    `follows_grammar=False` for a replay model: see UNENFORCED_CODES."""
    operations = tuple(operations)
    schema = load_schema(
        base_url, generation_model, embedding_model, operations=operations, timeout_s=timeout_s, max_tokens=max_tokens
    )
    run_seed = run_seed if run_seed is not None else int(time.time() * 1000) % 2**32
    summary = Summary(seed=run_seed)
    started = time.monotonic()
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()
        for mode in modes:
            _run_operation(operation, mode, max_examples, timeout_s, run_seed, follows_grammar, summary)
    summary.seconds = time.monotonic() - started
    return summary


def main() -> None:
    """`python -m tests.schemathesis_run BASE_URL GENERATION_MODEL EMBEDDING_MODEL [MAX_EXAMPLES]`."""
    import sys

    base_url, generation_model, embedding_model, *rest = sys.argv[1:]
    summary = run(base_url, generation_model, embedding_model, max_examples=int(rest[0]) if rest else 25)
    print(summary.report())
    print(json.dumps({"cases": summary.total, "5xx": summary.server_errors, "failures": len(summary.failures)}))


if __name__ == "__main__":
    main()
