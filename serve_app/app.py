"""Built applications of the shipped configs, for `serve build`, which needs an application object
rather than a builder with arguments: `serve_app.app:<config>` is the application of
`configs/<config>.yaml` (dashes as underscores), e.g.

    serve build serve_app.app:multi_model -o my-serve-config.yaml   # then edit and `serve deploy` it

The generated file names this import path; the cluster imports it the same way, from the project as
installed there (`pip install -e`, as the images do, keeps configs/ next to the code).
"""

from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from serve_app.builder import build_app
from serve_app.config import load_serve_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def __getattr__(name: str) -> Application:
    path = CONFIG_DIR / f"{name.replace('_', '-')}.yaml"
    if name.startswith("__") or not path.is_file():
        raise AttributeError(f"{__name__} has no application {name!r}: no config {path}")
    return build_app(load_serve_config(path)["applications"][0]["args"])
