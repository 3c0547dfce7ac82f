"""Two engine replicas on one CPU node (issue #22): where their threads compute, ours against vLLM's binding,
side by side in one run, on this machine.

vLLM's CPU backend binds each engine's threads to every core of the first NUMA node but one
(`VLLM_CPU_OMP_THREADS_BIND=auto`), the same cores for every replica on the node. Ours computes with the CPUs
Ray reserved for the replica and leaves their placement to the operating system
(`serve_app/engines/cpu_threads.py`). Per mode, two models of the embedded default (one replica each
with `num_cpus: 1`, otherwise as `configs/local.yaml` serves it) get a fresh ~2k-token agent prompt each
at the same moment, 3 times after a warm-up; printed: the medians of the pairs' time to first token and to
the answer's end (64 tokens), with the ratio to vLLM's binding.

    .venv/bin/python load_tests/cpu_threads.py

A mode's binding is in the environment Ray starts with, so each mode starts its own Ray.
"""

from __future__ import annotations

import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.compile_vs_eager import agent_prompt  # noqa: E402
from load_tests.local_serve import embedded_model, local_serve  # noqa: E402
from load_tests.timed_stream import TimedStream, timed_stream  # noqa: E402
from serve_app.engines.cpu_threads import BIND_VARIABLE  # noqa: E402

APP = "cpu-threads"
MODELS = ("replica-a", "replica-b")
ANSWER_TOKENS = 64
MEASURED_RUNS = 3
MODES = {"vLLM's binding (auto)": "auto", "ours (Ray's CPUs, unbound)": None}


def _pair(base_url: str, salt: int) -> list[TimedStream]:
    """One fresh prompt to each model, sent together."""

    def ask(index: int) -> TimedStream:
        body = {
            "model": MODELS[index],
            "messages": agent_prompt(2 * salt + index),
            "max_tokens": ANSWER_TOKENS,
            "temperature": 0,
            "ignore_eos": True,  # vLLM's extension: every run decodes the same number of tokens
            "stream_options": {"include_usage": True},
        }
        return timed_stream(base_url, body)

    with ThreadPoolExecutor(len(MODELS)) as pool:
        return list(pool.map(ask, range(len(MODELS))))


def main() -> None:
    from ray import serve

    from serve_app.builder import build_app

    rows: list[tuple[str, float, float]] = []
    for salt, (mode, binding) in enumerate(MODES.items()):
        if binding is None:
            os.environ.pop(BIND_VARIABLE, None)
        else:
            os.environ[BIND_VARIABLE] = binding  # Ray's workers, and so the engines, inherit this environment
        print(f"==> {mode}", flush=True)
        with local_serve("agent-serve-cpu-threads") as port:
            base_url = f"http://127.0.0.1:{port}/v1"
            one_cpu = {"num_cpus": 1}  # two replicas on this machine, each with one CPU
            models = [embedded_model() | {"id": model_id, "deployment": one_cpu} for model_id in MODELS]
            serve.run(build_app({"models": models}), name=APP, route_prefix="/")
            _pair(base_url, -1 - salt)  # warm-up: first-request costs are not the mode's
            pairs = [_pair(base_url, 10 * salt + n) for n in range(MEASURED_RUNS)]
            serve.delete(APP)
        ttft_s = statistics.median(stream.first_token_s for pair in pairs for stream in pair)
        total_s = statistics.median(stream.total_s for pair in pairs for stream in pair)
        rows.append((mode, ttft_s, total_s))
        print(rows[-1], flush=True)
    _, vllm_ttft_s, vllm_total_s = rows[0]
    print(f"\nTwo replicas of the embedded model on this machine ({os.cpu_count()} CPUs), a prompt to each at once")
    print(f"{'mode':<28}{'TTFT s':>9}{'x':>6}{'answer s':>10}{'x':>6}")
    for mode, ttft_s, total_s in rows:
        print(f"{mode:<28}{ttft_s:>9.2f}{ttft_s / vllm_ttft_s:>6.2f}{total_s:>10.2f}{total_s / vllm_total_s:>6.2f}")


if __name__ == "__main__":
    main()
