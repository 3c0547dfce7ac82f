"""A real agent end to end over `/v1/responses` (R9): the Codex CLI (npm `@openai/codex@0.169.0`, which
speaks only the Responses API) runs a task against the app, offline, as a custom provider.

The replay engine answers Codex's first turn with a call to Codex's shell tool (`exec_command`) that
creates a file, and its second turn (after the command's output) with a plain answer; the file must exist
afterwards, Codex must exit 0, and its JSON events must show no error. Skips only when npm is not available.
"""

from __future__ import annotations

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
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed (needed for the Codex CLI)"),
]

CODEX_VERSION = "0.169.0"


@pytest.fixture(scope="module")
def codex() -> Path:
    """The Codex CLI, installed once into the project's ignored cache."""
    prefix = ROOT / ".cache" / f"codex-{CODEX_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "codex"
    if not binary.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"@openai/codex@{CODEX_VERSION}"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return binary


def codex_command(codex: Path, base_url: str, model: str, task: str) -> list[str]:
    """`codex exec` pointed at this server as a custom provider (the README shows users the same command).
    The features left out (sub-agents, goals, images) only add tool schemas a small model's context cannot
    spare; web search is a hosted tool nothing here can run."""
    provider = f'{{name="agent-serve",base_url="{base_url}",env_key="AGENT_SERVE_API_KEY",wire_api="responses"}}'
    return [
        str(codex),
        "exec",
        "--json",
        "--ephemeral",
        "--skip-git-repo-check",
        "--sandbox",
        "danger-full-access",
        "-m",
        model,
        "-c",
        "model_provider=agent-serve",
        "-c",
        f"model_providers.agent-serve={provider}",
        "-c",
        "web_search=disabled",
        "-c",
        "analytics.enabled=false",
        "-c",
        "features.multi_agent=false",
        "-c",
        "features.goals=false",
        "-c",
        "features.view_image=false",
        task,
    ]


def test_codex_creates_a_file_through_the_app(codex: Path, running_app: RunningApp, tmp_path: Path) -> None:
    workdir, home = tmp_path / "work", ROOT / ".cache" / "codex-home"  # Codex refuses a home under /tmp
    workdir.mkdir()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {**os.environ, "CODEX_HOME": str(home), "AGENT_SERVE_API_KEY": "sk-unused-without-keys"}
    run = subprocess.run(
        codex_command(codex, running_app.base_url, REPLAY_MODEL, "Create the file codex.txt with a greeting."),
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,  # it would read more of the task from stdin
    )
    story = run.stdout[-4000:] + run.stderr[-3000:]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert (workdir / "codex.txt").read_text() == "Hello from agent-serve\n", story
    items = [e["item"] for e in events if e.get("type") == "item.completed"]
    assert ["I created codex.txt with a greeting."] == [i["text"] for i in items if i["type"] == "agent_message"], story
    commands = [i for i in items if i["type"] == "command_execution"]
    assert len(commands) == 1 and commands[0]["exit_code"] == 0, story
    # Codex reports a model it has no metadata for as an error item; that warning is the only one allowed.
    errors = [i for i in items if i["type"] == "error" and "Model metadata" not in i.get("message", "")]
    assert not errors and not [e for e in events if e.get("type") in ("turn.failed", "error")], story
    assert run.returncode == 0, story
