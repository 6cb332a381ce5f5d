"""structlog set-up: readable on a terminal, JSON lines otherwise (containers, files, pipes).

One handler on the root logger renders everything: our structlog events and the standard-library
records of our dependencies (asyncio, pydantic, prometheus_client, ...), so every line of a
service has the same format and the same timestamp, level and logger fields.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(fmt: str = "auto", level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    common = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # Records that did not come through structlog get the same fields, plus their logger.
            foreign_pre_chain=[*common, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level_number = logging.getLevelName(level.upper())
    root.setLevel(level_number)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *common,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        # One named stdlib logger for all our events: the default factory walks the stack on every call.
        logger_factory=lambda *_: logging.getLogger("p2p"),
        cache_logger_on_first_use=False,
    )
