"""Our modules' logs in a replica go where Serve's own go."""

from __future__ import annotations

import logging

SERVE_LOGGER = "ray.serve"
OUR_LOGGER = "agent_serve"


def log_with_serve() -> None:
    """`serve_app` logs to `agent_serve.*`. In a replica Serve sets up only its own logger (the replica's log
    file and stderr, in Serve's format, with the request id), so ours fell to Python's last resort: warnings
    and errors on stderr without that context, and information (an engine's dtype and threads, fields
    ignored, clients that left) nowhere. Ours takes Serve's handlers and level; called first in a replica's
    constructor, after Serve has configured its logger."""
    serve_logger = logging.getLogger(SERVE_LOGGER)
    ours = logging.getLogger(OUR_LOGGER)
    ours.setLevel(serve_logger.level)
    ours.propagate = False
    ours.handlers = list(serve_logger.handlers)
