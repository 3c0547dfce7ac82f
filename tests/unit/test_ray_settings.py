"""`serve_app/ray_settings.py`: the node settings reach the raylet we start, and an engine replica that Ray
started at a lower priority gets back to normal, or says what to do (issue #7)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from typing import cast

import pytest

from serve_app.ray_settings import NODE_ENV_VARS, prepare_node_environment
from tests.conftest import ROOT

CAP_SYS_NICE = 23
PR_CAPBSET_DROP = 24
RAY_DEFAULT_ENV = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}

# Starts a thread, as a Ray worker has before it runs our code, at the niceness Ray gives workers.
PROBE = """
import json, os, threading
os.setpriority(os.PRIO_PROCESS, 0, 15)
done = threading.Event()
thread = threading.Thread(target=done.wait)
thread.start()
from serve_app.ray_settings import restore_normal_priority
refused = restore_normal_priority()
niceness = sorted({os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")})
done.set()
print(json.dumps({"refused": refused, "niceness": niceness}))
"""


def _may_raise_priority() -> bool:
    status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
    return bool(int(status["CapEff"], 16) >> CAP_SYS_NICE & 1)


def _probe(env: dict[str, str], without_cap_sys_nice: bool = False) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=_drop_cap_sys_nice if without_cap_sys_nice else None,
    )
    return cast(dict[str, object], json.loads(out.stdout))


def _drop_cap_sys_nice() -> None:
    """In the child before exec: without CAP_SYS_NICE in the bounding set, the program runs without it, even as root."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_SYS_NICE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_SYS_NICE)")


def test_prepare_node_environment_sets_what_is_unset_and_keeps_explicit_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NODE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    prepare_node_environment()
    assert NODE_ENV_VARS.items() <= os.environ.items()
    monkeypatch.setenv("RAY_worker_niceness", "5")
    prepare_node_environment()
    assert os.environ["RAY_worker_niceness"] == "5"


def test_engine_replica_started_at_niceness_15_gets_back_to_0_in_every_thread() -> None:
    result = _probe(RAY_DEFAULT_ENV)
    if _may_raise_priority():
        assert result == {"refused": None, "niceness": [0]}
    else:
        _assert_refused(result)


def test_engine_replica_that_may_not_raise_its_priority_says_what_to_do() -> None:
    _assert_refused(_probe(RAY_DEFAULT_ENV, without_cap_sys_nice=_may_raise_priority()))


def _assert_refused(result: dict[str, object]) -> None:
    assert result["niceness"] == [15]
    assert "RAY_worker_niceness=0" in str(result["refused"])


def test_an_operators_own_worker_niceness_is_kept() -> None:
    result = _probe(dict(os.environ) | {"RAY_worker_niceness": "15"})
    assert result == {"refused": None, "niceness": [15]}
