"""How long do running streams stall while a long prompt is prefilled, per engine step budget? (issue #22)

vLLM computes a long prompt in chunks of at most `max_num_batched_tokens` tokens a step, and the streams it is
decoding get their next token only when a step ends: on a CPU a 2048-token chunk of the embedded model is
seconds of compute, so every running answer freezes that long, chunk after chunk, while an agent's first turn
arrives. This serves the embedded model as `configs/local.yaml` does (one replica), once per `--budgets`
value on a fresh deployment, side by side in one run: `--streams` streams keep decoding (each asks for
`--answer-tokens` tokens, then again), while Cline's captured first turn (~5,700 tokens, made uncached by a
number at its start) arrives `--prompts` times, one after the other with `--gap-s` between. It prints, per
budget, the streams' inter-token latency (p50, p99, max) and the arriving prompts' time to first token.

    .venv/bin/python load_tests/prefill_stall.py                   # budgets 2048 (vLLM's on a CPU) and 512
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
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

APP = "prefill-stall"


def _embedded_model(budget: int) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    model: dict[str, Any] = config["applications"][0]["args"]["models"][0]
    model["engine_args"]["max_num_batched_tokens"] = budget
    return model


def _cline_first_turn(model: str, number: int) -> dict[str, Any]:
    """Cline's captured first turn, with a number at the very start of its system prompt: no prefix of it is
    in the engine's cache, as for a new agent's first turn."""
    body: dict[str, Any] = json.loads(
        (reference_dir() / "client-requests" / "cline-3.0.65-first-turn.json").read_text()
    )["body"]
    system = body["messages"][0]
    system["content"] = f"[agent {number}]\n{system['content']}"
    return body | {"model": model, "stream": True, "max_tokens": 1, "temperature": 0}


async def _keep_streaming(
    client: httpx.AsyncClient, model: str, answer_tokens: int, gaps: list[float], stop: asyncio.Event
) -> None:
    """Answer after answer until `stop`; the gaps between the tokens of one answer go to `gaps`."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        "stream": True,
        "max_tokens": answer_tokens,
        "ignore_eos": True,  # every answer runs its full length, whatever the model would say
    }
    while not stop.is_set():
        async with client.stream("POST", "/chat/completions", json=body) as response:
            await record_token_gaps(response, gaps)


async def _first_token_s(client: httpx.AsyncClient, body: dict[str, Any]) -> float:
    started = time.monotonic()
    async with client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and json.loads(line.removeprefix("data: "))["choices"]:
                return time.monotonic() - started
    raise AssertionError("the stream ended without a token")


async def _measure(
    base_url: str, model: str, options: argparse.Namespace, first: int
) -> tuple[list[float], list[float]]:
    """The streams' inter-token gaps while the prompts arrive, and the prompts' times to first token."""
    gaps: list[float] = []
    first_tokens: list[float] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=base_url, timeout=1800) as client:
        streams = [
            asyncio.create_task(_keep_streaming(client, model, options.answer_tokens, gaps, stop))
            for _ in range(options.streams)
        ]
        await asyncio.sleep(options.gap_s)  # the streams are decoding when the first prompt arrives
        for number in range(first, first + options.prompts):
            first_tokens.append(await _first_token_s(client, _cline_first_turn(model, number)))
            await asyncio.sleep(options.gap_s)
        stop.set()
        await asyncio.gather(*streams)
    return gaps, first_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="2048,512", help="comma-separated max_num_batched_tokens to compare")
    parser.add_argument("--streams", type=int, default=4, help="answers decoding meanwhile")
    parser.add_argument("--answer-tokens", type=int, default=64, help="max_tokens of each streamed answer")
    parser.add_argument("--prompts", type=int, default=3, help="Cline first turns arriving, one after the other")
    parser.add_argument("--gap-s", type=float, default=3.0, help="between one prompt's first token and the next")
    options = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from ray import serve

    from serve_app.builder import build_app

    rows = []
    with local_serve("agent-serve-prefill-stall") as port:
        base_url = f"http://127.0.0.1:{port}/v1"
        for index, budget in enumerate(int(b) for b in options.budgets.split(",")):
            model = _embedded_model(budget)
            print(f"==> max_num_batched_tokens {budget}: starting the embedded model", flush=True)
            serve.run(build_app({"models": [model]}), name=APP, route_prefix="/")
            gaps, first_tokens = asyncio.run(_measure(base_url, model["id"], options, index * options.prompts))
            serve.delete(APP)
            rows.append((budget, gaps, first_tokens))
    print(
        f"\n{options.streams} streams of the embedded model decoding while Cline's first turn (uncached) arrives "
        f"{options.prompts} times, {options.gap_s:g} s apart; one replica per step budget"
    )
    print(f"{'max_num_batched_tokens':<24}{'ITL p50 ms':>11}{'p99 ms':>9}{'max ms':>9}{'prompt TTFT s':>15}")
    for budget, gaps, first_tokens in rows:
        print(
            f"{budget:<24}{1000 * percentile(gaps, 0.5):>11.1f}{1000 * percentile(gaps, 0.99):>9.1f}"
            f"{1000 * max(gaps):>9.1f}{statistics.median(first_tokens):>15.2f}"
            f"   ({', '.join(f'{s:.2f}' for s in first_tokens)})"
        )


if __name__ == "__main__":
    main()
