"""In a replica, our modules' records go to Serve's handlers at Serve's level: an engine's dtype and threads,
ignored fields and clients that left were logged at INFO and shown nowhere."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from deployments.logs import OUR_LOGGER, SERVE_LOGGER, log_with_serve


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def serve_handler() -> Iterator[_Kept]:
    """Serve's logger as a replica has it (a handler of its own, INFO), restored after."""
    serve_logger, ours = logging.getLogger(SERVE_LOGGER), logging.getLogger(OUR_LOGGER)
    saved = [(logger, logger.level, logger.propagate, list(logger.handlers)) for logger in (serve_logger, ours)]
    kept = _Kept()
    serve_logger.handlers = [kept]
    serve_logger.setLevel(logging.INFO)
    yield kept
    for logger, level, propagate, handlers in saved:
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers = handlers


def test_our_records_go_where_serves_go(serve_handler: _Kept) -> None:
    log_with_serve()
    logging.getLogger("agent_serve.engine").info("model 'm' runs in float32")
    logging.getLogger("agent_serve.engine").debug("below Serve's level")
    assert serve_handler.messages == ["model 'm' runs in float32"]


def test_our_records_follow_serves_logger_when_it_is_configured_again(serve_handler: _Kept) -> None:
    """A deployment's `logging_config` changed: Serve replaces its handlers and level in the running replica."""
    log_with_serve()
    renewed = _Kept()
    logging.getLogger(SERVE_LOGGER).handlers = [renewed]
    logging.getLogger(SERVE_LOGGER).setLevel(logging.DEBUG)
    logging.getLogger("agent_serve.http").debug("now shown")
    assert (serve_handler.messages, renewed.messages) == ([], ["now shown"])
