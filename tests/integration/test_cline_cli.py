"""A real agent end to end: the Cline CLI (npm `cline@3.0.65`) runs a task against the app.

The replay engine answers Cline's first turn with a call to Cline's own `editor` tool (create a file)
and its second turn with a plain answer; the file must exist afterwards and Cline's JSON output must show
no protocol error. Skips only when npm is not available.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import REPLAY_MODEL, RunningApp

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed (needed for the Cline CLI)"),
]

CLINE_VERSION = "3.0.65"
WORKDIR = Path("/tmp/agent-serve-cline-e2e")  # the replay script's editor call writes here


@pytest.fixture(scope="module")
def cline() -> Path:
    """The Cline CLI, installed once into the project's ignored cache."""
    prefix = ROOT / ".cache" / f"cline-{CLINE_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "cline"
    if not binary.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"cline@{CLINE_VERSION}"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return binary


def test_cline_creates_a_file_through_the_app(cline: Path, running_app: RunningApp, tmp_path: Path) -> None:
    try:
        shutil.rmtree(WORKDIR, ignore_errors=True)
        WORKDIR.mkdir()
        env = {**os.environ, "HOME": str(tmp_path), "CLINE_NO_AUTO_UPDATE": "1", "IS_TEST": "true"}
        subprocess.run(
            [
                str(cline),
                "auth",
                "-p",
                "openai-compatible",
                "-k",
                "sk-test",
                "-m",
                REPLAY_MODEL,
                "-b",
                running_app.base_url,
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        run = subprocess.run(
            [
                str(cline),
                "--json",
                "-P",
                "openai-compatible",
                "-m",
                REPLAY_MODEL,
                "-t",
                "120",
                "-c",
                str(WORKDIR),
                "Create the file hello.txt with a greeting.",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        messages = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        assert (WORKDIR / "hello.txt").read_text() == "Hello from agent-serve\n", (
            run.stdout[-3000:] + run.stderr[-2000:]
        )
        errors = [
            m for m in messages if "error" in json.dumps(m).lower() and m.get("type") in ("error", "api_req_failed")
        ]
        assert not errors, errors
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    finally:
        _stop_hub_daemons()


def _stop_hub_daemons() -> None:
    """The CLI starts a hub daemon (its own session) that outlives it: it must not outlive the test."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "--cline-hub-daemon" in cmdline and str(WORKDIR) in cmdline:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
