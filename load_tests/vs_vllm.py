"""Side by side with bare vLLM: the same model, engine arguments and workload against vLLM's own OpenAI
server (`python -m vllm.entrypoints.openai.api_server`) and against this app, in one run.

    .venv/bin/python load_tests/vs_vllm.py [--config configs/local.yaml] [--rounds 2] [--workloads chat tools]

Both servers run for the whole benchmark; vLLM's load generator (`vllm.benchmarks.serve`, streaming
chat, random prompts, greedy decoding so both produce the same tokens) drives one at a time, the order
alternating per round so drift on a shared machine hits both alike. Per workload and concurrency (1, 8,
32) it prints the output-token throughput ratio (ours / bare), TTFT p50 and p99 deltas, ITL p50 delta
and the error count, against the overhead budget. Workloads: `chat` (plain streaming chat) and `tools`
(the same with a tool declared: bare vLLM with its hermes parser, ours through the ToolParsing
deployment; for a template without tools, as SmolLM2's, ours also adds its tool prompt, so prompts are
longer on our side). The replay-engine mode (stack overhead with no model compute) is `overhead.py`.

`--team`: ours as a team's endpoint, as issue #20 budgets it: the load generator's requests carry a key
from a keys file, with limits on requests, tokens and concurrency (high enough never to refuse, so every
request is counted against them); the metrics are always recorded, tracing stays at its default (off).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.local_serve import local_serve  # noqa: E402
from serve_app.config import ModelConfig, load_serve_config, parse_app_config  # noqa: E402
from serve_app.model_source import prepare_model  # noqa: E402

CONCURRENCY_PROMPTS = {1: 16, 8: 48, 32: 96}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WORKLOAD_BODIES: dict[str, dict[str, Any]] = {"chat": {}, "tools": {"tools": [TOOL], "tool_choice": "auto"}}
# The overhead budget (issue #7): what our stack may add on top of the engine.
BUDGET = {"throughput_ratio_min": 0.95, "ttft_p50_delta_ms_c1": 15.0, "itl_p50_delta_ms": 2.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return cast(int, s.getsockname()[1])


def _wait_ready(base_url: str, process: subprocess.Popen[bytes] | None, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server at {base_url} exited with {process.returncode} before it was ready")
        try:
            key = os.environ.get("OPENAI_API_KEY")  # what the load generator sends (`--team`)
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            if httpx.get(f"{base_url}/v1/models", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{base_url} not ready after {timeout_s} s")


def bare_vllm_command(model: ModelConfig, model_dir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """vLLM's own server with exactly the engine arguments our engine deployment passes to AsyncLLM."""
    from serve_app.engines.vllm_engine import VLLMEngine

    kwargs = VLLMEngine(model_dir, model.engine_args, model.id, model.reasoning_parser).engine_args()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--disable-uvicorn-access-log",
    ]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            command.append(flag)
        elif isinstance(value, dict):  # a config group (`structured_outputs_config`): JSON on the command line
            command += [flag, json.dumps(value)]
        elif value is not False:
            command += [flag, str(value)]
    env = dict(os.environ)
    if model.engine_args.kv_cache_space_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(model.engine_args.kv_cache_space_gib)
    return command, env


def bench(
    base_url: str, model_id: str, model_dir: Path, concurrency: int, extra_body: dict[str, Any]
) -> dict[str, Any]:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = [
        "--backend",
        "openai-chat",
        "--base-url",
        base_url,
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        model_id,
        "--tokenizer",
        str(model_dir),
        "--dataset-name",
        "random",
        "--random-input-len",
        "128",
        "--random-output-len",
        "64",
        "--num-prompts",
        str(CONCURRENCY_PROMPTS[concurrency]),
        "--max-concurrency",
        str(concurrency),
        "--temperature",
        "0",
        "--seed",
        "0",
        "--percentile-metrics",
        "ttft,itl",
        "--metric-percentiles",
        "50,99",
        "--num-warmups",
        "2",
        "--disable-tqdm",
    ]
    if extra_body:
        args += ["--extra-body", json.dumps(extra_body)]
    result = cast(dict[str, Any], main(parser.parse_args(args)))
    result["failed"] = CONCURRENCY_PROMPTS[concurrency] - int(result.get("completed", 0))
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    """One figure per metric over the rounds: the median of the rounds' values; errors summed."""
    return {
        "throughput": statistics.median(r["output_throughput"] for r in runs),
        "ttft_p50": statistics.median(r["median_ttft_ms"] for r in runs),
        "ttft_p99": statistics.median(r["p99_ttft_ms"] for r in runs),
        "itl_p50": statistics.median(r["median_itl_ms"] for r in runs),
        "output_tokens": sum(r["total_output_tokens"] for r in runs),
        "errors": sum(r["failed"] for r in runs),
    }


def report(results: dict[str, dict[int, dict[str, dict[str, float]]]]) -> None:
    for workload, by_concurrency in results.items():
        print(f"\n=== {workload}: ours vs bare vLLM (same model and engine arguments, median of rounds) ===")
        print(
            f"  {'conc':>4} {'thrpt ratio':>11} {'TTFT p50 bare/ours':>19} {'Δp50':>8} {'Δp99':>8} "
            f"{'ITL p50 bare/ours':>18} {'ΔITL':>7} {'errors b/o':>10} {'tokens b/o':>13}"
        )
        for concurrency, pair in by_concurrency.items():
            bare, ours = pair["bare"], pair["ours"]
            ratio = ours["throughput"] / bare["throughput"] if bare["throughput"] else float("nan")
            d50, d99, ditl = (
                ours["ttft_p50"] - bare["ttft_p50"],
                ours["ttft_p99"] - bare["ttft_p99"],
                ours["itl_p50"] - bare["itl_p50"],
            )
            checks = []
            if concurrency in (8, 32):
                checks.append("ratio " + ("ok" if ratio >= BUDGET["throughput_ratio_min"] else "OVER"))
            if concurrency == 1:
                checks.append("TTFT " + ("ok" if d50 <= BUDGET["ttft_p50_delta_ms_c1"] else "OVER"))
            checks.append("ITL " + ("ok" if ditl <= BUDGET["itl_p50_delta_ms"] else "OVER"))
            checks.append("errors " + ("ok" if bare["errors"] + ours["errors"] == 0 else "SOME"))
            # Throughput compares like with like only when both generated the same tokens.
            checks.append("same work " + ("ok" if bare["output_tokens"] == ours["output_tokens"] else "NO"))
            print(
                f"  {concurrency:>4} {ratio:>11.3f} {bare['ttft_p50']:>8.1f}/{ours['ttft_p50']:>7.1f} ms"
                f" {d50:>+6.1f}ms "
                f"{d99:>+6.1f}ms {bare['itl_p50']:>7.2f}/{ours['itl_p50']:>6.2f} ms {ditl:>+5.2f}ms "
                f"{int(bare['errors']):>4}/{int(ours['errors']):<4}"
                f" {int(bare['output_tokens']):>6}/{int(ours['output_tokens']):<6} "
                f"[{', '.join(checks)}]"
            )
    print(
        f"\n  budget: throughput ratio >= {BUDGET['throughput_ratio_min']} at 8 and 32, TTFT p50 delta <= "
        f"{BUDGET['ttft_p50_delta_ms_c1']} ms at 1, ITL p50 delta <= {BUDGET['itl_p50_delta_ms']} ms, zero errors"
    )


def _measure(
    targets: dict[str, str], model_id: str, model_dir: Path, options: argparse.Namespace
) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """Each workload at each concurrency, for the rounds asked, both servers in turn (alternating who goes
    first); the medians of the rounds by workload, concurrency and server."""
    results: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for workload in options.workloads:
        results[workload] = {}
        for concurrency in options.concurrency:
            runs: dict[str, list[dict[str, Any]]] = {"bare": [], "ours": []}
            for round_index in range(options.rounds):
                order = ["bare", "ours"] if round_index % 2 == 0 else ["ours", "bare"]
                for name in order:
                    print(f"--- {workload}, concurrency {concurrency}, round {round_index + 1}: {name}", flush=True)
                    runs[name].append(bench(targets[name], model_id, model_dir, concurrency, WORKLOAD_BODIES[workload]))
            results[workload][concurrency] = {name: summarize(r) for name, r in runs.items()}
    return results


def _as_team_endpoint(app_args: dict[str, Any]) -> dict[str, Any]:
    """The app with a keys file of one key with limits, whose key the load generator sends (vLLM's benchmark
    reads `OPENAI_API_KEY`; bare vLLM ignores it)."""
    import tempfile

    from serve_app.keys import hash_key, new_key

    key = new_key()
    limits = {"requests_per_minute": 1_000_000, "tokens_per_minute": 1_000_000_000, "concurrent_requests": 1000}
    keys = Path(tempfile.mkdtemp()) / "keys.yaml"
    keys.write_text(json.dumps({"keys": [{"name": "bench", "sha256": hash_key(key), "limits": limits}]}))
    os.environ["OPENAI_API_KEY"] = key
    server = dict(app_args.get("server") or {}) | {"keys_file": str(keys)}
    return app_args | {"server": server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "local.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOAD_BODIES), default=["chat", "tools"])
    parser.add_argument(
        "--concurrency", type=int, nargs="+", choices=sorted(CONCURRENCY_PROMPTS), default=sorted(CONCURRENCY_PROMPTS)
    )
    parser.add_argument("--team", action="store_true", help="ours with a keyed, limited caller (issue #20)")
    options = parser.parse_args()

    from ray import serve

    from serve_app.builder import build_app

    app_args = load_serve_config(options.config)["applications"][0]["args"]
    if options.team:
        app_args = _as_team_endpoint(app_args)
    model = parse_app_config(app_args).models[0]
    model_dir = prepare_model(model.source, parse_app_config(app_args).model_cache_dir)
    bare_port = _free_port()
    command, env = bare_vllm_command(model, model_dir, bare_port)
    print("bare vLLM:", " ".join(command), flush=True)
    bare = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        with local_serve("agent-serve-vs-vllm") as our_port:
            serve.run(build_app({**app_args, "models": [app_args["models"][0]]}), name="ours", route_prefix="/")
            targets = {"bare": f"http://127.0.0.1:{bare_port}", "ours": f"http://127.0.0.1:{our_port}"}
            _wait_ready(targets["bare"], bare)
            _wait_ready(targets["ours"], None)
            report(_measure(targets, model.id, model_dir, options))
    finally:
        with contextlib.suppress(ProcessLookupError):  # (the bare server may have exited already)
            os.killpg(bare.pid, signal.SIGTERM)
            try:
                bare.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a busy-polling EngineCore left behind would skew the next run
                os.killpg(bare.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
