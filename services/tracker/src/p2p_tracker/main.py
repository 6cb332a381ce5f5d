"""p2p-tracker: the UDP registry of live holders (seeders, and leechers that share)."""

from __future__ import annotations

import argparse
import asyncio
import time

import structlog
from prometheus_client import CollectorRegistry
from pydantic import Field

from p2p_shared.auth import Sealer
from p2p_shared.logs import configure_logging
from p2p_shared.net.service import keep_healthy, run, serve_metrics, stop_event
from p2p_shared.ratelimit import AddressLimiter
from p2p_shared.registry import HolderRegistry
from p2p_shared.settings import CommonSettings, add_common_flags, build_settings

from .core import TrackerCore
from .metrics import TrackerMetrics

log = structlog.get_logger()

# Nonces of sealed datagrams remembered against replays: each is kept ~30 s (its timestamp's
# window), so this holds ~17,000 sealed datagrams/s, above what one tracker process answers;
# beyond it datagrams are refused (`nonces_full`). About 45 MB when full.
SEALED_NONCES = 1 << 19


class TrackerSettings(CommonSettings):
    host: str = "0.0.0.0"
    port: int = Field(6969, ge=1, le=65535)
    metrics_port: int = Field(9101, ge=0, le=65535)
    heartbeat_interval: float = Field(30.0, gt=0, description="seconds between holder heartbeats")
    missed_heartbeats: int = Field(3, ge=1, description="heartbeats missed before a holder expires")
    max_peers: int = Field(50, ge=1, le=50, description="holders of each kind in one lookup answer")
    max_seeders: int = Field(100_000, ge=1, description="registry capacity, holders of either kind")
    max_files: int = Field(200_000, ge=1, description="registry capacity, file registrations (a file 3 holders have counts 3)")
    max_holders_per_address: int = Field(1024, ge=0, description="holders one address may register; 0: no limit")
    max_files_per_address: int = Field(4096, ge=0, description="file registrations of one address's holders; 0: no limit")
    max_requests_per_address: float = Field(200.0, ge=0, description="datagrams/s one address may send; 0: no limit")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2p-tracker", description="Registry of live holders: seeders and sharing leechers (UDP).")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="UDP port (default 6969)")
    p.add_argument("--heartbeat-interval", type=float, help="seconds between holder heartbeats (default 30)")
    p.add_argument("--missed-heartbeats", type=int, help="missed heartbeats before expiry (default 3)")
    p.add_argument("--max-peers", type=int, help="holders of each kind, complete and partial, in one lookup answer (default 50)")
    p.add_argument("--max-seeders", type=int, help="registry capacity, holders of either kind (default 100000)")
    p.add_argument("--max-files", type=int, help="registry capacity, file registrations: a file three holders have counts three (default 200000)")
    p.add_argument("--max-holders-per-address", type=int, help="holders one source address may register (default 1024; 0: no limit)")
    p.add_argument("--max-files-per-address", type=int, help="file registrations of one source address's holders (default 4096; 0: no limit)")
    p.add_argument("--max-requests-per-address", type=float, help="datagrams/s one address may send, bursts of twice that (default 200; 0 turns it off)")
    add_common_flags(p)
    return p


class _TrackerProtocol(asyncio.DatagramProtocol):
    def __init__(self, core: TrackerCore) -> None:
        self.core = core
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        answer = self.core.handle(data, addr, time.time())
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error", error=str(exc))


async def serve(settings: TrackerSettings) -> int:
    stop = stop_event()
    registry = CollectorRegistry()
    holders = HolderRegistry(
        ttl=settings.heartbeat_interval * settings.missed_heartbeats,
        max_holders=settings.max_seeders,
        max_files=settings.max_files,
        max_holders_per_address=settings.max_holders_per_address or None,
        max_files_per_address=settings.max_files_per_address or None,
    )
    rate = settings.max_requests_per_address
    limiter = AddressLimiter(rate, 2 * rate) if rate else None
    secret = settings.secret_bytes()
    settings.warn_if_open(log, "tracker")
    core = TrackerCore(
        holders,
        TrackerMetrics(registry, holders),
        settings.heartbeat_interval,
        settings.max_peers,
        limiter=limiter,
        sealer=Sealer(secret, max_nonces=SEALED_NONCES) if secret else None,
    )
    serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _TrackerProtocol(core), local_addr=(settings.host, settings.port)
        )
    except OSError as exc:
        log.error(f"cannot listen on udp {settings.host}:{settings.port}: {exc.strerror}")
        return 1
    log.info("tracker listening", host=settings.host, port=settings.port, metrics_port=settings.metrics_port)
    sweep = min(settings.heartbeat_interval, 5.0)
    health = asyncio.create_task(keep_healthy(settings.health_file, stop))
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), sweep)
            except TimeoutError:
                pass
            core.expire(time.time())
    finally:
        transport.close()
        health.cancel()
    log.info("tracker stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = build_settings(TrackerSettings, parser(), argv)
    configure_logging(settings.log_format, settings.log_level)
    return run(serve(settings))
