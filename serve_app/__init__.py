"""agent-serve: an OpenAI-compatible endpoint for open models on Ray Serve + vLLM.

`serve_app:build_app` is the Serve import path (see configs/). It is loaded lazily so that the pure
modules of this package (protocol, parsers, engines' logic) import without Ray.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "build_app":
        from serve_app.builder import build_app

        return build_app
    raise AttributeError(name)
