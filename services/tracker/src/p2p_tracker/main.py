"""p2p-tracker: the UDP registry of live holders (seeders, and leechers that share)."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import time
from urllib.parse import urlsplit

import structlog
from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator

from p2p_shared.auth import ConnectionIds, Sealer
from p2p_shared.errors import P2PError
from p2p_shared.logs import configure_logging
from p2p_shared.net.service import keep_healthy, run, serve_metrics, stop_event
from p2p_shared.ratelimit import AddressLimiter
from p2p_shared.settings import CommonSettings, add_common_flags, build_settings

from .core import TrackerCore
from .metrics import TrackerMetrics
from .shell import TrackerProtocol
from .store import Limits, MemoryStore, RegistryStore, StoreUnavailable

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
    registry: str = "memory"
    registry_timeout: float = Field(0.5, gt=0, le=60, description="seconds a registry store call may take")

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if value == "memory" or scheme in ("redis", "rediss", "unix"):
            return value
        if scheme in ("redis+sentinel", "rediss+sentinel"):
            from .redis_store import sentinel_address  # only a tracker with Redis needs redis-py

            try:
                sentinel_address(value)
            except ValueError as exc:
                raise ValueError(f"{redacted(value)!r}: {exc}") from None
            return value
        raise ValueError(
            "must be memory or a Redis URL (redis://HOST:PORT/DB, rediss://, unix://, "
            f"redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER_NAME[/DB]), not {redacted(value)!r}"
        )


def redacted(url: str) -> str:
    """A store URL fit for logs: its password left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


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
    p.add_argument("--registry", help="where the registry lives: memory (this process), or redis://HOST:PORT/DB, shared by tracker "
                   "replicas, or redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER_NAME[/DB]: the primary Sentinel names, followed through failovers")
    p.add_argument("--registry-timeout", type=float, help="seconds a call of the registry store may take before the request is answered `unavailable` (default 0.5)")
    add_common_flags(p)
    return p


# Connection ids from one key on every replica, so an id one issued is valid at all of them.
CONNECTION_IDS = "connection-ids"


async def open_store(settings: TrackerSettings) -> RegistryStore:
    limits = Limits(
        ttl=settings.heartbeat_interval * settings.missed_heartbeats,
        max_holders=settings.max_seeders,
        max_files=settings.max_files,
        max_holders_per_address=settings.max_holders_per_address or None,
        max_files_per_address=settings.max_files_per_address or None,
    )
    if settings.registry == "memory":
        return MemoryStore(limits)
    from .redis_store import RedisStore  # only a tracker with Redis needs redis-py

    try:
        return await RedisStore.connect(settings.registry, limits, settings.registry_timeout)
    except StoreUnavailable as exc:
        raise P2PError(f"cannot use the registry at {redacted(settings.registry)}: {exc}") from None


async def connection_key(store: RegistryStore, secret: bytes | None, current: bytes) -> bytes:
    """The key of connection ids: derived from the swarm secret, else shared through the store
    (the first replica's wins), else this process's own."""
    if secret:
        return hmac.digest(secret, b"p2p-tracker|" + CONNECTION_IDS.encode(), "sha256")
    if store.shared:
        return await store.shared_key(CONNECTION_IDS, current)
    return current


async def sweep(core: TrackerCore, store: RegistryStore, secret: bytes | None) -> None:
    """Expire silent holders and read the registry's size; with a shared store, put our key of
    connection ids back if the store lost it (a Redis restarted empty), or take the one there."""
    try:
        core.expired(await store.expire(time.time()))
        await store.refresh_stats()
        core.ids.key = await connection_key(store, secret, core.ids.key)
        core.metrics.store_up.set(1)
    except StoreUnavailable as exc:
        core.store_failed(exc)


async def serve(settings: TrackerSettings) -> int:
    stop = stop_event()
    registry = CollectorRegistry()
    store = await open_store(settings)
    try:
        return await _serve(settings, store, registry, stop)
    finally:
        await store.close()


async def _serve(settings: TrackerSettings, store: RegistryStore, registry: CollectorRegistry, stop: asyncio.Event) -> int:
    rate = settings.max_requests_per_address
    limiter = AddressLimiter(rate, 2 * rate) if rate else None
    secret = settings.secret_bytes()
    settings.warn_if_open(log, "tracker")
    try:
        ids = ConnectionIds(await connection_key(store, secret, os.urandom(32)))
    except StoreUnavailable as exc:
        raise P2PError(f"cannot use the registry at {redacted(settings.registry)}: {exc}") from None
    sealer = None
    if secret:
        # Alone, the tracker remembers nonces itself; replicas share the memory in their store.
        sealer = Sealer(secret) if store.shared else Sealer(secret, max_nonces=SEALED_NONCES)
    core = TrackerCore(
        TrackerMetrics(registry, store),
        settings.heartbeat_interval,
        settings.max_peers,
        limiter=limiter,
        ids=ids,
        sealer=sealer,
        shared_nonces=store.shared,
    )
    serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: TrackerProtocol(core, store), local_addr=(settings.host, settings.port)
        )
    except OSError as exc:
        log.error(f"cannot listen on udp {settings.host}:{settings.port}: {exc.strerror}")
        return 1
    log.info(
        "tracker listening", host=settings.host, port=settings.port, metrics_port=settings.metrics_port,
        registry=redacted(settings.registry),
    )
    every = min(settings.heartbeat_interval, 5.0)
    health = asyncio.create_task(keep_healthy(settings.health_file, stop))
    try:
        await sweep(core, store, secret)  # the gauges show a shared registry from the start
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass
            await sweep(core, store, secret)
    finally:
        transport.close()
        health.cancel()
    log.info("tracker stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = build_settings(TrackerSettings, parser(), argv)
    configure_logging(settings.log_format, settings.log_level)
    return run(serve(settings))
