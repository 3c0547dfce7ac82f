"""torch.compile or eager for the embedded default (issue #22): what each costs to start and what it gives back
in prefill and decode, side by side in one run, on this machine.

Three deployments of the embedded model as `configs/local.yaml` serves it, one after the other:

- `eager`: `enforce_eager: true` (the shipped setting);
- `compile, cold`: torch.compile with an empty compile cache (a first start on a new machine);
- `compile, warm`: torch.compile again, its cache now filled (every later start).

Each prints the seconds from deploy to ready, then, after a warm-up request, the medians of 3 requests: time
to first token of a fresh ~2k-token prompt (prefill: an agent's wait) and decode speed over a 128-token
answer, with the ratios to eager.

    .venv/bin/python load_tests/compile_vs_eager.py

The compile cache lives in a scratch directory for the run (`VLLM_CACHE_ROOT`), so the cold start is cold
whatever this machine compiled before.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.local_serve import embedded_model, local_serve  # noqa: E402
from load_tests.timed_stream import timed_stream  # noqa: E402
from tests.openai_spec import reference_dir  # noqa: E402

APP = "compile-vs-eager"
ANSWER_TOKENS = 128
MEASURED_RUNS = 3
MODES = {"eager": True, "compile, cold": False, "compile, warm": False}


def agent_prompt(salt: int) -> list[dict[str, Any]]:
    """Cline's system prompt with its first three tools' text (~2k tokens) and a question: a prefill of an
    agent's size. `salt` opens the prompt, so that no request finds another's prefix in vLLM's cache."""
    body = json.loads((reference_dir() / "client-requests" / "cline-3.0.65-first-turn.json").read_text())["body"]
    tools = json.dumps(body["tools"][:3])
    return [
        {"role": "system", "content": f"Session {salt}.\n{body['messages'][0]['content']}\n\nTools:\n{tools}"},
        {"role": "user", "content": "Write a long, detailed plan for refactoring a web service."},
    ]


def _measure(base_url: str, model: str, salt: int) -> tuple[float, float, int, int]:
    """(seconds to the first token, decode tokens per second after it, prompt tokens, answer tokens)."""
    body = {
        "model": model,
        "messages": agent_prompt(salt),
        "max_tokens": ANSWER_TOKENS,
        "temperature": 0,
        "ignore_eos": True,  # vLLM's extension: every mode decodes the same number of tokens
        "stream_options": {"include_usage": True},
    }
    stream = timed_stream(base_url, body)
    usage = stream.usage
    decode_tok_s = (usage["completion_tokens"] - 1) / (stream.total_s - stream.first_token_s)
    return stream.first_token_s, decode_tok_s, usage["prompt_tokens"], usage["completion_tokens"]


def main() -> None:
    from ray import serve

    from serve_app.builder import build_app

    rows: list[tuple[str, float, float, float, int, int]] = []
    with tempfile.TemporaryDirectory() as compile_cache:
        # Ray's workers, and so the engines, inherit this environment.
        os.environ["VLLM_CACHE_ROOT"] = compile_cache
        with local_serve("agent-serve-compile-vs-eager") as port:
            base_url = f"http://127.0.0.1:{port}/v1"
            for salt, (mode, enforce_eager) in enumerate(MODES.items()):
                model = embedded_model(enforce_eager=enforce_eager)
                print(f"==> {mode}", flush=True)
                started = time.monotonic()
                serve.run(build_app({"models": [model]}), name=APP, route_prefix="/")
                ready_s = time.monotonic() - started
                _measure(base_url, model["id"], -1 - salt)  # warm-up: first-request costs are not the mode's
                runs = [_measure(base_url, model["id"], 10 * salt + n) for n in range(MEASURED_RUNS)]
                ttft_s, decode_tok_s, prompt, answer = (statistics.median(values) for values in zip(*runs, strict=True))
                rows.append((mode, ready_s, ttft_s, decode_tok_s, int(prompt), int(answer)))
                serve.delete(APP)
                print(rows[-1], flush=True)
    eager = rows[0]
    print("\nThe embedded model, eager vs torch.compile (float32 where this CPU lacks native bf16)")
    print(
        f"{'mode':<15}{'ready s':>9}{'x':>6}{'TTFT s':>9}{'x':>6}{'decode tok/s':>14}{'x':>6}{'prompt':>8}{'answer':>8}"
    )
    for mode, ready_s, ttft_s, decode, prompt, answer in rows:
        print(
            f"{mode:<15}{ready_s:>9.1f}{ready_s / eager[1]:>6.2f}{ttft_s:>9.2f}{ttft_s / eager[2]:>6.2f}"
            f"{decode:>14.1f}{decode / eager[3]:>6.2f}{prompt:>8}{answer:>8}"
        )


if __name__ == "__main__":
    main()
