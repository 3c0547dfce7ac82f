"""`serve_app/keys.py`: keys with identities, stored only as hashes, reloaded when the file changes (issue #20)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve_app.cli import main as cli
from serve_app.keys import (
    KEY_PREFIX,
    Identity,
    KeyRing,
    KeyRingSource,
    KeysFile,
    KeysFileError,
    Limits,
    add_key,
    hash_key,
    parse_keys_file,
    revoke_key,
)

TEAM_FILE = f"""
teams:
  platform: {{limits: {{requests_per_minute: 600}}}}
keys:
  - name: alice
    team: platform
    sha256: {hash_key("sk-alice")}
    models: [small]
    limits: {{requests_per_minute: 60, concurrent_requests: 2}}
    priority: -1
  - name: bob
    sha256: {hash_key("sk-bob")}
    revoked: true
"""


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_known_by_its_hash_with_its_identity() -> None:
    ring = KeyRing(parse_keys_file(TEAM_FILE, "test"), plain_keys=["sk-plain"])
    alice = ring.identify("sk-alice")
    assert alice == Identity(
        "alice", "platform", frozenset({"small"}), Limits(requests_per_minute=60, concurrent_requests=2),
        Limits(requests_per_minute=600), -1,
    )  # fmt: skip
    assert alice.may_use("small", "small-model-id") and not alice.may_use("big")
    assert ring.identify("sk-bob") == "revoked"
    assert ring.identify("sk-nobody") == "unknown"
    assert ring.identify("sk-plain") == Identity("key-1")  # the simple case: every model, no limits
    assert not ring.open and KeyRing(KeysFile(), []).open


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("keys: [{name: a, sha256: abc}]", "sha256"),
        (f"keys: [{{name: a, sha256: {hash_key('x')}, colour: red}}]", "colour"),
        (f"keys: [{{name: a, sha256: {hash_key('x')}}}, {{name: a, sha256: {hash_key('y')}}}]", "same name"),
        (f"keys: [{{name: a, sha256: {hash_key('x')}}}, {{name: b, sha256: {hash_key('x')}}}]", "same sha256"),
        ("keys: [", "not a valid keys file"),
    ],
)
def test_a_bad_keys_file_is_refused_naming_the_problem(text: str, complaint: str) -> None:
    with pytest.raises(KeysFileError, match=complaint):
        parse_keys_file(text, "keys.yaml")


def test_the_file_is_reloaded_when_it_changes_and_a_broken_edit_keeps_the_last_good_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(TEAM_FILE)
    clock = _Clock()
    source = KeyRingSource([], str(path), None, reload_interval_s=5.0, clock=clock)
    assert isinstance(source.current().identify("sk-alice"), Identity)
    path.write_text(TEAM_FILE.replace("priority: -1", "priority: 0\n    revoked: true"))
    assert isinstance(source.current().identify("sk-alice"), Identity)  # not looked at again yet
    clock.now = 5.0
    assert source.current().identify("sk-alice") == "revoked"
    path.write_text("keys: [")
    clock.now = 10.0
    assert source.current().identify("sk-alice") == "revoked" and "not a valid keys file" in str(source.reload_error)
    path.write_text(TEAM_FILE)
    clock.now = 15.0
    assert isinstance(source.current().identify("sk-alice"), Identity) and source.reload_error is None


def test_the_keys_file_content_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_KEYS", TEAM_FILE)
    source = KeyRingSource(["sk-plain"], None, "TEAM_KEYS", reload_interval_s=5.0, clock=_Clock())
    assert isinstance(source.current().identify("sk-alice"), Identity)
    assert source.current().identify("sk-plain") == Identity("key-1")
    monkeypatch.setenv("TEAM_KEYS", "keys: [")
    with pytest.raises(KeysFileError, match=r"\$TEAM_KEYS"):  # at start, a broken file is the operator's error
        KeyRingSource([], None, "TEAM_KEYS", reload_interval_s=5.0, clock=_Clock())


def test_new_keys_are_stored_as_hashes_and_revoked_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    limits = {"tokens_per_minute": 1000}
    fields: dict[str, object] = {"name": "carol", "team": "ml", "models": ["small"], "limits": limits}
    key = add_key(path, fields)
    assert key.startswith(KEY_PREFIX) and len(key) > 40
    assert key not in path.read_text() and hash_key(key) in path.read_text()
    assert cli(["keys", "new", "dave", "--file", str(path), "--rpm", "30", "--concurrent", "2"]) == 0
    dave_key = capsys.readouterr().out.strip()
    assert dave_key not in path.read_text()
    ring = KeyRing(parse_keys_file(path.read_text(), "keys"), [])
    dave = ring.identify(dave_key)
    assert isinstance(dave, Identity) and dave.limits == Limits(requests_per_minute=30, concurrent_requests=2)
    carol = ring.identify(key)
    assert isinstance(carol, Identity) and carol.team == "ml" and carol.limits.tokens_per_minute == 1000
    revoke_key(path, "carol")
    assert KeyRing(parse_keys_file(path.read_text(), "keys"), []).identify(key) == "revoked"
    assert cli(["keys", "revoke", "nobody", "--file", str(path)]) == 2
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
