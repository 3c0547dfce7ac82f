"""Who is calling (issue #20): API keys with identities — a name, a team, the models the key may use, its
limits and its priority — kept in a keys file that stores each key only as its SHA-256.

    # agent-serve keys file (`agent-serve keys new` writes it; only hashes are stored)
    teams:
      platform: {limits: {requests_per_minute: 600}}
    keys:
      - name: alice
        team: platform
        sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
        models: [smollm2-135m-instruct]   # omitted: every model
        limits: {requests_per_minute: 60, tokens_per_minute: 200000, concurrent_requests: 4}
        priority: 0                       # lower goes first when the engine is busy
        revoked: false

The file comes from `server.keys_file` (a path: a Kubernetes Secret mounted as a volume is one, and is
reloaded when the Secret changes) or, with the same content, from the environment variable named by
`server.keys_env`. The simple case keeps working: plain keys in `server.api_keys` or `AGENT_SERVE_API_KEYS`
are identities too (`key-1`, `key-2`, … in their order), with every model and no limits.

A presented key is hashed and looked up: the lookup compares digests, which tell an attacker nothing about
the keys. This module is pure: `http_api` asks `KeyRingSource.current()` on each request.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

KEY_PREFIX = "sk-as-"
"""What `new_key` starts its keys with: recognizable in a leaked file or a secret scanner."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Per key or per team; `null` (or left out): no limit of that kind."""

    requests_per_minute: int | None = Field(None, ge=1, description="Requests started in any minute.")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Prompt + completion tokens in any minute, counted as the usage fields count them."
    )
    concurrent_requests: int | None = Field(None, ge=1, description="Requests in flight at once.")


class TeamEntry(_Strict):
    limits: Limits = Limits()


class KeyEntry(_Strict):
    name: str = Field(min_length=1, description="Who holds the key: what logs and metrics show, never the key.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The key's SHA-256, in lowercase hex.")
    team: str | None = Field(None, min_length=1, description="A team in `teams` (its limits apply too), or any name.")
    models: list[str] | None = Field(None, description="Model ids or aliases the key may use; null: every model.")
    limits: Limits = Limits()
    priority: int = Field(0, description="Lower is served first when the engine is busy (its admission queue).")
    revoked: bool = Field(False, description="A revoked key is refused (401) like an unknown one.")


class KeysFile(_Strict):
    keys: list[KeyEntry] = Field(default_factory=list)
    teams: dict[str, TeamEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> KeysFile:
        for what, values in (("name", [k.name for k in self.keys]), ("sha256", [k.sha256 for k in self.keys])):
            if repeated := sorted({v for v in values if values.count(v) > 1}):
                raise ValueError(f"two keys with the same {what}: {repeated[0]}")
        return self


@dataclass(frozen=True)
class Identity:
    """The caller, once its key is known."""

    name: str
    team: str | None = None
    models: frozenset[str] | None = None  # None: every model
    limits: Limits = Limits()
    team_limits: Limits = Limits()
    priority: int = 0

    def may_use(self, *names: str) -> bool:
        """Whether the key may use a model known by any of `names` (its id and the alias asked for)."""
        return self.models is None or any(name in self.models for name in names)


ANONYMOUS = Identity("anonymous")
"""The caller when no key is configured: auth is off."""

Verdict = Identity | Literal["unknown", "revoked"]


class KeyRing:
    """The keys in force: looks a presented key up by its hash."""

    def __init__(self, keys_file: KeysFile, plain_keys: list[str]) -> None:
        self._by_hash: dict[str, Identity | Literal["revoked"]] = {}
        for index, key in enumerate(plain_keys, start=1):
            self._by_hash[hash_key(key)] = Identity(f"key-{index}")
        for entry in keys_file.keys:
            team = keys_file.teams.get(entry.team or "", TeamEntry())
            models = None if entry.models is None else frozenset(entry.models)
            identity = Identity(entry.name, entry.team, models, entry.limits, team.limits, entry.priority)
            self._by_hash[entry.sha256] = "revoked" if entry.revoked else identity

    @property
    def open(self) -> bool:
        """No keys at all: every request is the anonymous caller's."""
        return not self._by_hash

    def identify(self, presented: str) -> Verdict:
        return self._by_hash.get(hash_key(presented), "unknown")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeysFileError(ValueError):
    pass


def parse_keys_file(text: str, where: str) -> KeysFile:
    try:
        return KeysFile.model_validate(yaml.safe_load(text) or {})
    except (yaml.YAMLError, ValidationError, ValueError) as exc:
        raise KeysFileError(f"{where}: not a valid keys file: {exc}") from None


class KeyRingSource:
    """The current key ring: plain keys and the keys file's content from the environment are read once, the
    keys file again whenever it changed (looked at no more often than every `reload_interval_s`). A file
    that became invalid keeps the last good ring in force; `reload_error` says why."""

    def __init__(
        self,
        plain_keys: list[str],
        keys_file: str | None,
        keys_env: str | None,
        reload_interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._plain = plain_keys
        self._path = None if keys_file is None else Path(keys_file)
        env_text = os.environ.get(keys_env, "") if keys_env else ""
        self._from_env = parse_keys_file(env_text, f"${keys_env}") if env_text.strip() else KeysFile()
        self._interval = reload_interval_s
        self._clock = clock
        self._seen: str | None = None
        self._next_look = 0.0
        self.reload_error: str | None = None
        self._ring = self._read()  # at start an invalid file is the operator's error: raise it

    def current(self) -> KeyRing:
        now = self._clock()
        if self._path is not None and now >= self._next_look:
            self._next_look = now + self._interval
            try:
                self._ring = self._read()
                self.reload_error = None
            except (OSError, KeysFileError) as exc:
                self.reload_error = str(exc)
        return self._ring

    def _read(self) -> KeyRing:
        from_file = KeysFile()
        if self._path is not None:
            text = self._path.read_text()  # a few kilobytes: compared whole, as a timestamp may not move
            if text == self._seen:
                return self._ring
            from_file = parse_keys_file(text, str(self._path))
            self._seen = text
        try:
            merged = KeysFile(
                keys=[*self._from_env.keys, *from_file.keys], teams={**self._from_env.teams, **from_file.teams}
            )
        except ValidationError as exc:
            raise KeysFileError(f"{self._path} with the keys from the environment: {exc}") from None
        return KeyRing(merged, self._plain)


def add_key(path: Path, entry_fields: dict[str, object]) -> str:
    """A new key for the keys file at `path` (created if missing), written there as its hash: the key itself
    is returned, to be handed to its holder once."""
    keys_file = parse_keys_file(path.read_text(), str(path)) if path.exists() else KeysFile()
    key = new_key()
    entry = KeyEntry.model_validate({**entry_fields, "sha256": hash_key(key)})
    _write(path, KeysFile(keys=[*keys_file.keys, entry], teams=keys_file.teams))
    return key


def revoke_key(path: Path, name: str) -> None:
    keys_file = parse_keys_file(path.read_text(), str(path))
    if name not in [k.name for k in keys_file.keys]:
        raise KeysFileError(f"{path}: no key named {name!r}")
    keys = [k.model_copy(update={"revoked": True}) if k.name == name else k for k in keys_file.keys]
    _write(path, KeysFile(keys=keys, teams=keys_file.teams))


def _write(path: Path, keys_file: KeysFile) -> None:
    """Whole or not at all: a replica reading the file meanwhile sees the old content or the new."""
    text = "# agent-serve keys file: only each key's SHA-256 is stored (docs/operators.md)\n" + yaml.safe_dump(
        keys_file.model_dump(mode="json", exclude_defaults=True), sort_keys=False
    )
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
