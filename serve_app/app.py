"""A ready `Application` for `serve build serve_app.app:app`, which needs an application object rather
than a builder: the application of the Serve config named by `AGENT_SERVE_CONFIG` (default
`configs/local.yaml`, relative to the working directory as `serve run` paths are), built on import.

    AGENT_SERVE_CONFIG=configs/multi-model.yaml serve build serve_app.app:app -o my-serve-config.yaml
"""

from __future__ import annotations

import os
from pathlib import Path

from serve_app.builder import build_app
from serve_app.config import load_serve_config

CONFIG = Path(os.environ.get("AGENT_SERVE_CONFIG", "configs/local.yaml"))

app = build_app(load_serve_config(CONFIG)["applications"][0]["args"])
