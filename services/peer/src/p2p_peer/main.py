"""p2p-peer: one long-running peer per host. It keeps a cache of what it fetched, shares all of
it with the swarm, serves files it is given (`--seed`) as an origin, and answers plain HTTP on
the host (the gateway), so that curl, aria2c or a model loader get the swarm unchanged."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from pathlib import Path
from typing import Annotated

import structlog
from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from p2p_shared.catalog import ManifestCache, expand_paths, load_file
from p2p_shared.errors import P2PError
from p2p_shared.limits import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE
from p2p_shared.logs import configure_logging
from p2p_shared.net.cache import HostCache
from p2p_shared.net.engine import Engine
from p2p_shared.net.service import run, serve_metrics, stop_event
from p2p_shared.net.tls import fetching_context, serving_context
from p2p_shared.settings import (
    DownloadSettings,
    Size,
    add_common_flags,
    add_download_flags,
    add_serving_flags,
    build_settings,
)

from .gateway import Gateway
from .metrics import PeerMetrics
from .mirror import Mirror
from .node_config import containerd_config
from .upstream import parse_registries

log = structlog.get_logger()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "p2p-peer"


class PeerSettings(DownloadSettings):
    host: str = "0.0.0.0"
    port: int = Field(7001, ge=0, le=65535)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    cache_size: Size = 10 << 30
    seed: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=1, le=MAX_CHUNK_SIZE)
    no_super_seed: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = Field(7080, ge=0, le=65535)
    http_allow: Annotated[tuple[Network, ...], NoDecode] = ()
    http_token_file: Path | None = None
    http_timeout: float = Field(60.0, gt=0)
    http_max_connections: int = Field(512, ge=1)
    http_max_connections_per_address: int = Field(64, ge=1)
    no_prefetch: bool = False
    registry: Annotated[list[str], NoDecode] = Field(default_factory=list)
    registry_auth: Path | None = None
    registry_connect_timeout: float = Field(1.0, gt=0)
    registry_wait: float = Field(600.0, gt=0)
    registry_part_size: Size = 4 << 20
    no_registry_prefetch: bool = False
    metrics_port: int = Field(9104, ge=0, le=65535)

    @field_validator("registry", mode="before")
    @classmethod
    def _registries(cls, value):
        return [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value

    @field_validator("seed", mode="before")
    @classmethod
    def _paths(cls, value):
        return [p for p in value.split(",") if p] if isinstance(value, str) else value

    @field_validator("http_allow", mode="before")
    @classmethod
    def _networks(cls, value):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        try:
            return tuple(ipaddress.ip_network(part, strict=False) for part in value)
        except ValueError as exc:
            raise ValueError(f"{exc}: give networks as CIDR, such as 10.0.0.0/8,192.168.1.7") from None

    @field_validator("http_token_file", "registry_auth", mode="before")
    @classmethod
    def _unset(cls, value):
        return None if value == "" else value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2p-peer", description="One peer per host: a cache shared with the swarm, behind an HTTP gateway.")
    p.add_argument("--tracker", help="tracker HOST:PORT, or several replicas of one tracker: HOST:PORT,HOST:PORT")
    p.add_argument("-p", "--port", type=int, help="TCP port of the peer protocol; 0 picks a free one")
    p.add_argument("--host", help="address the peer protocol binds")
    cache = p.add_argument_group("the cache")
    cache.add_argument("--cache-dir", type=Path, help="where fetched files are kept (default ~/.cache/p2p-peer)")
    cache.add_argument("--cache-size", help="bytes the cache may hold: a number, or with a unit (500MiB, 20GiB)")
    cache.add_argument("--seed", action="append", help="a file (or folder of files) to serve from where it is, as an origin; repeatable")
    cache.add_argument("--chunk-size", type=int, help="bytes per chunk of the seeded files")
    cache.add_argument("--no-super-seed", action="store_true", default=None, help="announce seeded files whole to every downloader")
    http = p.add_argument_group("the HTTP gateway")
    http.add_argument("--http-host", help="address the gateway binds")
    http.add_argument("--http-port", type=int, help="port of the gateway; 0 picks a free one")
    http.add_argument("--http-allow", help="networks besides loopback that may use the gateway: CIDR[,CIDR]")
    http.add_argument("--http-token-file", type=Path, help="require this bearer token (Authorization: Bearer ...)")
    http.add_argument("--http-timeout", type=float, help="seconds a client may take to send its request, or to take a block of the answer")
    http.add_argument("--http-max-connections", type=int, help="gateway connections at once")
    http.add_argument("--http-max-connections-per-address", type=int, help="gateway connections from one address at once")
    http.add_argument("--no-prefetch", action="store_true", default=None, help="after a range request of an uncached file, fetch only what readers want")
    registry = p.add_argument_group("the registry mirror (OCI distribution API, pull only, under /v2/)")
    registry.add_argument("--registry", action="append", help="an upstream registry, NAME=URL (docker.io=https://registry-1.docker.io); repeatable")
    registry.add_argument("--registry-auth", type=Path, help="credentials for the upstreams: a Docker config.json")
    registry.add_argument("--registry-connect-timeout", type=float, help="seconds to connect to an upstream before answering an error (default 1)")
    registry.add_argument("--registry-part-size", help="a blob larger than this comes in parts of this size, each a swarm file fetched from the upstream by one peer (default 4MiB)")
    registry.add_argument("--no-registry-prefetch", action="store_true", default=None, help="fetch a layer only when a client asks for it, not as soon as its image manifest is served")
    registry.add_argument("--registry-wait", type=float, help="seconds to wait for another peer's fetch of a blob from the upstream (default 600)")
    download = p.add_argument_group("downloads")
    add_download_flags(download)
    tls = p.add_argument_group("TLS on the peer protocol")
    tls.add_argument("--tls-cert", type=Path, help="our certificate (serve and fetch over TLS, with --tls-key and --tls-ca)")
    tls.add_argument("--tls-key", type=Path, help="private key of --tls-cert")
    tls.add_argument("--tls-ca", type=Path, help="CA that signs every peer's certificate")
    serving = p.add_argument_group("serving peers")
    add_serving_flags(serving)
    add_common_flags(p)
    return p


async def serve(settings: PeerSettings) -> int:
    stop = stop_event()
    settings.warn_if_open(log, "peer")
    registry = CollectorRegistry()
    metrics = PeerMetrics(registry)
    server_tls, client_tls = serving_context(settings), fetching_context(settings)
    engine = Engine(settings, metrics.engine, listen=(settings.host, settings.port), server_tls=server_tls, client_tls=client_tls)
    cache = HostCache(settings.cache_dir, settings.cache_size, engine, settings)
    metrics.watch(cache)
    manifests = ManifestCache(settings.cache_dir / "manifests")
    for path, follow in expand_paths(settings.seed):
        seeded, seconds = await asyncio.to_thread(load_file, path, settings.chunk_size, manifests, follow)
        cache.seed(seeded, super_seed=not settings.no_super_seed)
        log.info("file ready", file=seeded.manifest.name, size=seeded.manifest.size, file_id=seeded.file_id, cached=seconds is None)
    gateway = Gateway(settings, cache, metrics)
    try:
        upstreams = parse_registries(settings.registry, settings.registry_auth)
    except ValueError as exc:
        raise P2PError(str(exc)) from None
    mirror = Mirror(settings, cache, metrics, upstreams, gateway)
    gateway.app.add_routes(mirror.routes())
    try:
        await engine.start()
        await cache.open()
        await mirror.start()
        await gateway.start(settings.http_host, settings.http_port)
        serve_metrics(registry, settings.metrics_host, settings.metrics_port)
        log.info(
            "peer listening", host=settings.host, port=engine.port, http_host=settings.http_host, http_port=gateway.port,
            cache_dir=str(settings.cache_dir), cache_size=settings.cache_size, registries=sorted(upstreams),
        )
        await engine.serve_until(stop, settings.health_file)
    finally:
        await gateway.close()
        await mirror.close()
        await engine.close()
    log.info("peer stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["containerd-config"]:
        return containerd_config(args[1:])
    settings = build_settings(PeerSettings, parser(), argv)
    configure_logging(settings.log_format, settings.log_level)
    return run(serve(settings))
