"""What every service's `main` shares: signals, the metrics endpoint, one-line failures."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine

import structlog
from prometheus_client import CollectorRegistry, start_http_server

from ..errors import P2PError


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so services can shut down cleanly."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> None:
    if port == 0:
        return
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise P2PError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None


def run(main: Coroutine, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> int:
    """Run a service's async main; expected failures become one log line and exit code 1."""
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main)
    except P2PError as exc:
        structlog.get_logger().error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
