"""An agent's wait on the embedded default (issue #22): Cline's captured first turn (system prompt + tool
schemas, ~5,700 tokens) and its tool-result turn (the same prefix and one more exchange), each streamed to
its first token, on the embedded model as `configs/local.yaml` serves it, once per dtype, side by side in
one run. Prints each turn's time to first token and the cached prompt tokens vLLM's prefix cache gave it.

    .venv/bin/python load_tests/cline_turns.py                      # dtype auto (this CPU's fastest) vs bfloat16
    .venv/bin/python load_tests/cline_turns.py --dtypes auto        # just the default

Each dtype gets a fresh deployment (an empty prefix cache), with the default stall watch. Answers are capped at a
few tokens: the wait for the first token is the point, and the turn's prompt is cached whatever the answer's
length.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.local_serve import embedded_model, local_serve  # noqa: E402
from load_tests.timed_stream import timed_stream  # noqa: E402
from serve_app.engines.cpu_dtype import fastest_cpu_dtype, read_cpu_flags  # noqa: E402
from tests.openai_spec import reference_dir  # noqa: E402

TURNS = {"first turn": "cline-3.0.65-first-turn.json", "tool-result turn": "cline-3.0.65-tool-result-turn.json"}
ANSWER_TOKENS = 4


def _turn(base_url: str, model: str, name: str) -> tuple[float, int, int]:
    """(seconds to the first token, prompt tokens, cached prompt tokens) of one captured turn."""
    body = json.loads((reference_dir() / "client-requests" / TURNS[name]).read_text())["body"]
    body |= {"model": model, "max_tokens": ANSWER_TOKENS, "stream_options": {"include_usage": True}}
    stream = timed_stream(base_url, body)
    usage = stream.usage
    return stream.first_token_s, usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="auto,bfloat16", help="comma-separated engine dtypes to compare")
    options = parser.parse_args()
    from ray import serve

    from serve_app.builder import build_app

    rows = []
    with local_serve("agent-serve-cline-turns") as port:
        base_url = f"http://127.0.0.1:{port}/v1"
        for dtype in options.dtypes.split(","):
            model = embedded_model(dtype=dtype)
            serve.run(build_app({"models": [model]}), name="cline-turns", route_prefix="/")
            for name in TURNS:
                rows.append((dtype, name, *_turn(base_url, model["id"], name)))
            serve.delete("cline-turns")
    chosen, why = fastest_cpu_dtype(read_cpu_flags())
    print(f"\nCline 3.0.65's captured turns on the embedded model; on this CPU `auto` is {chosen}: {why}.")
    print(f"{'dtype':<10}{'turn':<18}{'prompt':>8}{'cached':>8}{'first token':>14}")
    for dtype, name, seconds, prompt, cached in rows:
        print(f"{dtype:<10}{name:<18}{prompt:>8}{cached:>8}{seconds:>13.1f}s")


if __name__ == "__main__":
    main()
