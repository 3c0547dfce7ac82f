"""The layout's promise: pure logic imports without Ray or vLLM; only the Serve wiring needs them."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

# The modules that wire the application into Ray Serve (the deployments/ package is all wiring too).
SERVE_WIRING = {"serve_app.builder", "serve_app.app", "serve_app.cli", "serve_app.__main__"}
# Plugins vLLM runs (a logits processor it loads by name into its own process, a stat logger it calls after
# each step): its classes are their base classes.
VLLM_PLUGINS = {"serve_app.engines.vllm_output_guards", "serve_app.engines.vllm_heartbeat"}

PROBE = """
import importlib, json, pkgutil, sys
import serve_app
skip = set(json.loads(sys.argv[1]))
modules = sorted(m.name for m in pkgutil.walk_packages(serve_app.__path__, "serve_app.") if m.name not in skip)
for name in modules:
    importlib.import_module(name)
print(json.dumps({"modules": modules, "loaded": sorted(m for m in ("ray", "vllm") if m in sys.modules)}))
"""


def test_every_module_but_the_serve_wiring_imports_without_ray_or_vllm() -> None:
    """In a fresh interpreter: this test process may have imported anything already."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(sorted(SERVE_WIRING | VLLM_PLUGINS))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout)
    assert "serve_app.tool_parsers.hermes" in report["modules"] and "serve_app.engines.vllm_engine" in report["modules"]
    assert report["loaded"] == [], f"importing the pure modules loaded {report['loaded']}"
