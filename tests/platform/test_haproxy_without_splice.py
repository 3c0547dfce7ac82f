"""`serve_app/haproxy_without_splice.py`: the program `RAY_SERVE_HAPROXY_BINARY_PATH` names becomes the real
HAProxy (the same process, as Serve tracks its pid) with `-dS` before Serve's arguments, and finds that
binary although the variable names the program itself. What the flag changes on the wire is tested with
Serve's own HAProxy in tests/reliability/test_client_leaves.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from serve_app.haproxy_without_splice import BINARY_PATH_VARIABLE, real_haproxy
from serve_app.ray_settings import HAPROXY_PROGRAM, prepare_node_environment

PROGRAM = Path(sysconfig.get_path("scripts")) / HAPROXY_PROGRAM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_real_binary_is_found_while_the_variable_names_this_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BINARY_PATH_VARIABLE, str(PROGRAM))
    binary = real_haproxy()
    assert Path(binary).name == "haproxy" and os.access(binary, os.X_OK)


def test_prepare_node_environment_names_the_program_unless_an_operator_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BINARY_PATH_VARIABLE, raising=False)
    prepare_node_environment()
    assert os.environ[BINARY_PATH_VARIABLE] == str(PROGRAM) and os.access(PROGRAM, os.X_OK)
    monkeypatch.setenv(BINARY_PATH_VARIABLE, "/usr/sbin/haproxy")
    prepare_node_environment()
    assert os.environ[BINARY_PATH_VARIABLE] == "/usr/sbin/haproxy"


def test_the_program_execs_haproxy_with_splice_off_and_serves(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n    mode http\n    timeout client 5s\n    timeout connect 5s\n    timeout server 5s\n"
        f"frontend f\n    bind 127.0.0.1:{port}\n    http-request return status 200 content-type text/plain string ok\n"
    )
    env = {**os.environ, BINARY_PATH_VARIABLE: str(PROGRAM)}
    haproxy = subprocess.Popen([str(PROGRAM), "-db", "-f", str(config)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert haproxy.poll() is None, haproxy.stderr.read() if haproxy.stderr else ""
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "ok"
        arguments = Path(f"/proc/{haproxy.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert Path(arguments[0].decode()).name == "haproxy"  # exec'd: the pid Serve holds is HAProxy's
        assert arguments[1:] == [b"-dS", b"-db", b"-f", str(config).encode()]
    finally:
        haproxy.terminate()
        haproxy.wait(timeout=10)
