"""What every service's `main` shares: signals, the metrics endpoint, one-line failures."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path

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


HEALTH_REFRESH_SECONDS = 5.0


async def keep_healthy(path: Path | None, stop: asyncio.Event, every: float = HEALTH_REFRESH_SECONDS) -> None:
    """Touch `path` every few seconds until `stop`, then remove it.

    A container healthcheck then only looks at the file's age (`find -newermt`): no probe
    connection, so no interpreter started per check and nothing counted as a peer or a tracker
    client; a stalled event loop stops touching it and the container turns unhealthy."""
    if path is None:
        return
    try:
        while not stop.is_set():
            try:
                path.touch()
            except OSError as exc:
                structlog.get_logger().error(f"cannot write the health file {path}: {exc.strerror}")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    finally:
        path.unlink(missing_ok=True)


DESCRIPTORS_BESIDES_CONNECTIONS = 256  # open files, listeners, the tracker's socket, threads' pipes


def open_files_for(connections: int) -> int:
    """Raise this process's soft limit of open files (within the hard one) so that a server
    capped at `connections` peer connections can hold them all; the limit now. A login's soft
    limit is often 1024, below a cap of some thousands; containers usually allow far more."""
    wanted = connections + DESCRIPTORS_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted or soft == resource.RLIM_INFINITY:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < wanted:
        structlog.get_logger().warning(
            "open files limited below the connection cap", limit=soft, max_connections=connections,
            hint="raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower --max-connections",
        )
    return soft


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
