"""What the prefix-affinity router's policy costs per request, in process (no Ray), as a shared endpoint grows.

    .venv/bin/python load_tests/router_cost.py [--replicas 8]

For each count of conversations placed in the last `ACTIVE_WINDOW_S` (one-off chats are a key each), with the
router's full table of `PLACED_KEYS` keys: the time of each step `PrefixAffinityRouter.choose_replicas` takes
for Cline's captured tool-result turn (its prompt's prefixes, the key's replica ranking, the replicas' active
conversations, the choice, noting where it went and how much of it the replica holds), best of 5 repeats.
Serve's own routing work (queue-length cache, the pending-request bookkeeping) is not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve_app.prefix_routing import (  # noqa: E402
    ACTIVE_WINDOW_S,
    PLACED_KEYS,
    Backlog,
    LatestKeys,
    LatestSizes,
    choose,
    prompt_prefixes,
    ranking,
)
from serve_app.protocol.chat import ChatCompletionRequest  # noqa: E402
from tests.openai_spec import reference_dir  # noqa: E402

NOW = 100_000.0
CALLS = 200


def _per_call_ms(step: Callable[[], object]) -> float:
    return min(timeit.repeat(step, number=CALLS, repeat=5)) / CALLS * 1e3


def _placed(replicas: list[str], in_window: int) -> LatestKeys[str]:
    """A router's table: `PLACED_KEYS` keys, the newest `in_window` of them placed in the active window."""
    placed: LatestKeys[str] = LatestKeys(PLACED_KEYS, ACTIVE_WINDOW_S)
    older = PLACED_KEYS - in_window
    for index in range(PLACED_KEYS):
        if index < older:
            moment = NOW - 10 * ACTIVE_WINDOW_S + index * 1e-3
        else:
            moment = NOW - ACTIVE_WINDOW_S + 1 + (index - older) * (ACTIVE_WINDOW_S - 2) / in_window
        placed.note(index.to_bytes(16, "big"), replicas[index % len(replicas)], moment)
    return placed


def _steps_ms(request: ChatCompletionRequest, replicas: list[str], placed: LatestKeys[str]) -> list[float]:
    """Each step's time for `request`, sent to a holder of its key, the second in its ranking."""
    prefixes = prompt_prefixes(request)
    key, size = prefixes[-1].key, prefixes[-1].size
    ranked = ranking(key, replicas)
    queues = {replica: index % 3 for index, replica in enumerate(replicas)}
    active = placed.recent(NOW)
    held = {replica: prefixes[0].size for replica in replicas} | {ranked[1]: size - 1000}
    backlog = Backlog(PLACED_KEYS)
    for index in range(len(replicas) * 2):
        backlog.add(f"request-{index}", replicas[index % len(replicas)], 1000.0)
    backlogs = {replica: backlog.work(replica) for replica in replicas}
    sizes: LatestSizes[tuple[bytes, str]] = LatestSizes(2 * PLACED_KEYS)

    def note() -> None:
        placed.note(key, ranked[1], NOW)
        for prefix in prefixes:
            sizes.note((prefix.key, ranked[1]), prefix.size)

    return [
        _per_call_ms(lambda: prompt_prefixes(request)),
        _per_call_ms(lambda: ranking(key, replicas)),
        _per_call_ms(lambda: placed.recent(NOW)),
        _per_call_ms(lambda: choose(ranked, queues, size, held, [ranked[1]], backlogs, active, 2.0)),
        _per_call_ms(note),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=8)
    options = parser.parse_args()
    capture = reference_dir() / "client-requests" / "cline-3.0.65-tool-result-turn.json"
    request = ChatCompletionRequest.model_validate(json.loads(capture.read_text())["body"])
    replicas = [f"replica-{index}" for index in range(options.replicas)]
    print(f"{options.replicas} replicas, {PLACED_KEYS} keys remembered; milliseconds per request")
    print("| placed in the window | prefixes | ranking | active conversations | choice | note | total |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for in_window in (1_200, 12_000, PLACED_KEYS):
        steps = _steps_ms(request, replicas, _placed(replicas, in_window))
        print(f"| {in_window} | " + " | ".join(f"{ms:.4f}" for ms in steps) + f" | {sum(steps):.4f} |")


if __name__ == "__main__":
    main()
