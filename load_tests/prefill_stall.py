"""What waits while a long prompt is prefilled, per engine step budget and prefill cap? (issue #22)

vLLM computes a long prompt in chunks of at most `max_num_batched_tokens` tokens a step. Two things wait for
those steps. The streams it is decoding get their next token only when a step ends: on a CPU a 2048-token
chunk of the embedded model is seconds of compute, so every running answer freezes that long, chunk after
chunk. And a running conversation's next turn that arrives meanwhile (a few hundred new tokens, its history
cached) is computed after the whole long prompt, unless `long_prefill_token_threshold` caps the long
prompt's share of each step.

This serves the embedded model as `configs/local.yaml` does (one replica), once per `--engines` entry on a
fresh deployment, side by side in one run. `--streams` streams keep decoding (each asks for
`--answer-tokens` tokens, then again), and `--later-turns` agent conversations (Cline's system prompt and
tool schemas, a task each) have their openings computed. Then Cline's captured first turn (~5,700 tokens,
made uncached by a number at its start) arrives `--prompts` times, one after the other with `--gap-s`
between; while each is computed, every conversation sends its next turn (a tool call and a 20-line file as
its result), `--turn-every-s` apart. Last, two first turns arrive together (0.2 s apart), `--pairs` times:
what a cap costs prompts of the same size. It prints, per engine, the streams' inter-token latency (p50,
p99, max), the first turns' time to first token, the later turns', and the two together's.

    .venv/bin/python load_tests/prefill_stall.py         # engines 2048 (vLLM's budget on a CPU), 512, 512/256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.agent_sessions import Turn, Workload, send_turn  # noqa: E402
from load_tests.local_serve import embedded_model, local_serve  # noqa: E402
from load_tests.percentiles import percentile  # noqa: E402
from load_tests.timed_stream import record_token_gaps  # noqa: E402
from tests.openai_spec import reference_dir  # noqa: E402

APP = "prefill-stall"
ALL_CLINE_TOOLS = 25
RESULT_LINES = 20
LATER_TURN_TOKENS = 8  # max_tokens of a later turn: its time to first token is what is measured
# Each first turn adds a turn (~400 tokens) to every conversation's ~5.8k-token history: 4 fit in 8,192 tokens.
MAX_PROMPTS_WITH_LATER_TURNS = 4
PAIR_OFFSET_S = 0.2  # the second of two first turns sent together comes this much later: the order is known


@dataclass(frozen=True)
class EngineSteps:
    """An `--engines` entry: `budget` or `budget/threshold`."""

    budget: int
    threshold: int | None = None

    @classmethod
    def parse(cls, text: str) -> EngineSteps:
        budget, _, threshold = text.partition("/")
        return cls(int(budget), int(threshold) if threshold else None)

    def __str__(self) -> str:
        return f"{self.budget}" if self.threshold is None else f"{self.budget} / {self.threshold}"


@dataclass
class Measured:
    gaps: list[float] = field(default_factory=list)  # the decoding streams' inter-token latencies
    first_turns: list[float] = field(default_factory=list)  # the long prompts' times to first token
    later_turns: list[float] = field(default_factory=list)  # the running conversations' next turns'
    pairs: list[tuple[float, float]] = field(default_factory=list)  # two first turns sent together


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


async def _first_token_s(client: httpx.AsyncClient, body: dict[str, Any], delay_s: float = 0.0) -> float:
    """Sent `delay_s` from now: its time to first token. A failed turn ends the run: its figures would lie."""
    await asyncio.sleep(delay_s)
    turn = Turn(session=-1, turn=-1)  # only its timing is read
    await send_turn(client, body, turn)
    if turn.error is not None or turn.ttft_s is None:
        raise RuntimeError(f"a turn failed: {turn.error or 'no token'}")
    return turn.ttft_s


async def _measure(base_url: str, model: str, options: argparse.Namespace, first: int) -> Measured:
    measured = Measured()
    conversations = Workload(
        sessions=options.later_turns,
        turns=options.prompts + 1,
        tools=ALL_CLINE_TOOLS,
        result_lines=RESULT_LINES,
        answer_tokens=LATER_TURN_TOKENS,
        stagger_s=0.0,
        think_s=0.0,
    )
    histories = [conversations.opening(session) for session in range(options.later_turns)]
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=base_url, timeout=1800) as client:
        for history in histories:  # computed now: the conversations' history is cached
            await _first_token_s(client, conversations.body(model, history))
        streams = [
            asyncio.create_task(_keep_streaming(client, model, options.answer_tokens, measured.gaps, stop))
            for _ in range(options.streams)
        ]
        await asyncio.sleep(options.gap_s)  # the streams are decoding when the first prompt arrives
        for turn, number in enumerate(range(first, first + options.prompts), start=1):
            for session, history in enumerate(histories):
                history += conversations.exchange(session, turn)
            first_turn, *later_turns = await asyncio.gather(
                _first_token_s(client, _cline_first_turn(model, number)),
                *(
                    _first_token_s(client, conversations.body(model, history), (session + 0.5) * options.turn_every_s)
                    for session, history in enumerate(histories)
                ),
            )
            measured.first_turns.append(first_turn)
            measured.later_turns += later_turns
            await asyncio.sleep(options.gap_s)
        number = first + options.prompts
        for _ in range(options.pairs):  # what sharing steps costs: the first of the two waits for the second
            pair = await asyncio.gather(
                _first_token_s(client, _cline_first_turn(model, number)),
                _first_token_s(client, _cline_first_turn(model, number + 1), PAIR_OFFSET_S),
            )
            measured.pairs.append((pair[0], pair[1]))
            number += 2
            await asyncio.sleep(options.gap_s)
        stop.set()
        await asyncio.gather(*streams)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines",
        default="2048,512,512/256",
        help="comma-separated engines to compare: max_num_batched_tokens[/long_prefill_token_threshold]",
    )
    parser.add_argument("--streams", type=int, default=4, help="answers decoding meanwhile")
    parser.add_argument("--answer-tokens", type=int, default=64, help="max_tokens of each streamed answer")
    parser.add_argument("--later-turns", type=int, default=4, help="conversations sending a turn meanwhile")
    parser.add_argument("--turn-every-s", type=float, default=2.0, help="between those turns")
    parser.add_argument(
        "--prompts",
        type=int,
        default=3,
        help="Cline first turns arriving, one after the other (at most 4 with later turns)",
    )
    parser.add_argument("--gap-s", type=float, default=3.0, help="between one prompt's first token and the next")
    parser.add_argument("--pairs", type=int, default=1, help="then two first turns sent together, this many times")
    options = parser.parse_args()
    if options.later_turns and options.prompts > MAX_PROMPTS_WITH_LATER_TURNS:
        parser.error(f"--prompts: at most {MAX_PROMPTS_WITH_LATER_TURNS} with later turns (the model's context)")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from ray import serve

    from serve_app.builder import build_app

    rows = []
    with local_serve("agent-serve-prefill-stall") as port:
        base_url = f"http://127.0.0.1:{port}/v1"
        for index, steps in enumerate(EngineSteps.parse(entry) for entry in options.engines.split(",")):
            model = embedded_model(max_num_batched_tokens=steps.budget, long_prefill_token_threshold=steps.threshold)
            print(f"==> max_num_batched_tokens / long_prefill_token_threshold {steps}: starting", flush=True)
            serve.run(build_app({"models": [model]}), name=APP, route_prefix="/")
            measured = asyncio.run(
                _measure(base_url, model["id"], options, index * (options.prompts + 2 * options.pairs))
            )
            serve.delete(APP)
            rows.append((steps, measured))
    print(
        f"\nOne replica of the embedded model: {options.streams} streams decoding while Cline's first turn "
        f"(uncached) arrives {options.prompts} times, {options.gap_s:g} s apart, and during each, "
        f"{options.later_turns} conversations' next turns, {options.turn_every_s:g} s apart; then two first "
        f"turns together, {options.pairs} times"
    )
    print(
        f"{'budget / threshold':<20}{'ITL p50 ms':>11}{'p99 ms':>9}{'max ms':>9}"
        f"{'first turn TTFT s':>19}{'later turns p50 s':>19}{'max s':>7}{'two together s':>16}   (first turns)"
    )
    for steps, measured in rows:
        later = measured.later_turns
        gaps = measured.gaps
        print(
            f"{steps!s:<20}{1000 * percentile(gaps, 0.5):>11.1f}{1000 * percentile(gaps, 0.99):>9.1f}"
            f"{1000 * max(gaps):>9.1f}{statistics.median(measured.first_turns):>19.2f}"
            f"{percentile(later, 0.5):>19.2f}{max(later, default=float('nan')):>7.2f}"
            f"{'; '.join(f'{a:.2f} / {b:.2f}' for a, b in measured.pairs):>16}"
            f"   ({', '.join(f'{s:.2f}' for s in measured.first_turns)})"
        )


if __name__ == "__main__":
    main()
