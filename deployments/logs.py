"""Our modules' logs in a replica go where Serve's own go."""

from __future__ import annotations

import logging

SERVE_LOGGER = "ray.serve"
OUR_LOGGER = "agent_serve"


class _ToServe(logging.Handler):
    """Hands each record to Serve's logger as it is at that moment: Serve replaces its handlers and level in a
    running replica when a deployment's `logging_config` changes, and copies of the old ones would write on."""

    def emit(self, record: logging.LogRecord) -> None:
        serve_logger = logging.getLogger(SERVE_LOGGER)
        if serve_logger.isEnabledFor(record.levelno):
            serve_logger.handle(record)


def log_with_serve() -> None:
    """`serve_app` logs to `agent_serve.*`. In a replica Serve sets up only its own logger (the replica's log
    file and stderr, in Serve's format, with the request id), so ours fell to Python's last resort: warnings
    and errors on stderr without that context, and information (an engine's dtype and threads, fields
    ignored, clients that left) nowhere. Ours hands its records to Serve's logger, which keeps or drops them
    by its own level."""
    ours = logging.getLogger(OUR_LOGGER)
    ours.setLevel(logging.DEBUG)
    ours.propagate = False
    ours.handlers = [_ToServe()]
