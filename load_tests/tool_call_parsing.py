"""Tool-call parsing cost against the size of the call: a call whose argument is a whole file.

    .venv/bin/python load_tests/tool_call_parsing.py [--sizes-kb 1 4 16 64 256 1024] [--parsers hermes ...]

For each format, one call `write_file(path, content)` whose `content` is N KB of source-like text (quotes,
backslashes, newlines, non-ASCII), parsed as the server parses it: whole (a non-streamed answer) and
streamed in 4-character deltas (about a token each), events collected as the response does. Prints the
milliseconds per KB at each size and, last, the ratio of the per-KB cost at the largest size to the
smallest: about 1 when parsing is linear, growing with the size when it is not. No model, no Ray.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve_app.protocol.tools import FunctionDefinition  # noqa: E402
from serve_app.tool_parsers import create_parser, parse_complete  # noqa: E402
from serve_app.tool_parsers.base import ParsedOutput  # noqa: E402

PATH = "src/app/main.py"
LINE = 'def handler(event: dict) -> str:  # "quoted", a \\ backslash, ünïcödé ☃\n'
TOOLS = [
    FunctionDefinition(
        name="write_file",
        parameters={
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    )
]


def _json_call(content: str, arguments_key: str = "arguments") -> str:
    return json.dumps({"name": "write_file", arguments_key: {"path": PATH, "content": content}}, ensure_ascii=False)


RENDER: dict[str, Callable[[str], str]] = {
    "hermes": lambda content: f"<tool_call>\n{_json_call(content)}\n</tool_call>",
    "llama3_json": lambda content: _json_call(content, "parameters"),
    "mistral": lambda content: f"[TOOL_CALLS][{_json_call(content)}]",
    "pythonic": lambda content: f"[write_file(path={PATH!r}, content={content!r})]",
    "qwen3_coder": lambda content: (
        f"<tool_call>\n<function=write_file>\n<parameter=path>\n{PATH}\n</parameter>\n"
        f"<parameter=content>\n{content}\n</parameter>\n</function>\n</tool_call>"
    ),
    "harmony": lambda content: (
        f"<|channel|>commentary to=functions.write_file <|constrain|>json<|message|>"
        f"{json.dumps({'path': PATH, 'content': content}, ensure_ascii=False)}<|call|>"
    ),
}


def _content(kb: int) -> str:
    text = LINE * (kb * 1024 // len(LINE.encode()) + 1)
    return text[: kb * 1024]


def _whole(parser_name: str, text: str) -> ParsedOutput:
    return parse_complete(create_parser(parser_name, TOOLS), text)


def _streamed(parser_name: str, text: str) -> ParsedOutput:
    parser, output = create_parser(parser_name, TOOLS), ParsedOutput()
    for start in range(0, len(text), 4):
        output.apply(parser.feed(text[start : start + 4]))
    output.apply(parser.finish())
    return output


def _measure(parse: Callable[[str, str], ParsedOutput], parser_name: str, kb: int) -> float:
    """Milliseconds per KB, after checking the call came out whole."""
    content = _content(kb)
    text = RENDER[parser_name](content)
    started = time.perf_counter()
    output = parse(parser_name, text)
    elapsed = time.perf_counter() - started
    (call,) = output.calls
    assert json.loads(call.arguments)["content"] == content, f"{parser_name}: the call did not come out whole"
    return elapsed * 1000 / kb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-kb", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024])
    parser.add_argument("--parsers", nargs="+", default=sorted(RENDER), choices=sorted(RENDER))
    parser.add_argument("--budget-s", type=float, default=120, help="skip larger sizes once one took this long")
    args = parser.parse_args()
    header = "".join(f"{kb:>9} KB" for kb in args.sizes_kb)
    print(f"ms per KB of arguments{'':<8}{header}   largest/smallest")
    for name in args.parsers:
        for mode, parse in (("whole", _whole), ("streamed", _streamed)):
            costs: list[float] = []
            for kb in args.sizes_kb:
                cost = _measure(parse, name, kb)
                costs.append(cost)
                if cost * kb / 1000 > args.budget_s:
                    break
            cells = "".join(f"{c:>12.3f}" for c in costs) + "".join(
                f"{'(skipped)':>12}" for _ in args.sizes_kb[len(costs) :]
            )
            print(f"{name + ' ' + mode:<30}{cells}   {costs[-1] / costs[0]:>8.1f}x", flush=True)


if __name__ == "__main__":
    main()
