"""p2p-seeder: serve files to leechers and keep the tracker informed."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Annotated

import structlog
from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from p2p_shared.limits import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE
from p2p_shared.logs import configure_logging
from p2p_shared.catalog import ManifestCache, expand_paths, load_file
from p2p_shared.net.engine import Engine
from p2p_shared.net.service import run, serve_metrics, stop_event
from p2p_shared.net.tls import serving_context
from p2p_shared.settings import EngineSettings, add_common_flags, add_serving_flags, build_settings
from .metrics import SeederMetrics

log = structlog.get_logger()


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "p2p-seeder"


class SeederSettings(EngineSettings):
    file: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [Path("large_text_file.txt")])
    host: str = "0.0.0.0"
    port: int = Field(7000, ge=1, le=65535)
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=1, le=MAX_CHUNK_SIZE)
    metrics_port: int = Field(9102, ge=0, le=65535)
    cache_dir: Path | None = Field(default_factory=_default_cache_dir)
    no_cache: bool = False
    no_super_seed: bool = False

    @field_validator("file", mode="before")
    @classmethod
    def _split(cls, value):
        return [p for p in value.split(",") if p] if isinstance(value, str) else value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2p-seeder", description="Serve files to leechers over TCP.")
    p.add_argument("-f", "--file", action="append", help="file (or folder of files) to seed; repeat for more (default large_text_file.txt)")
    p.add_argument("-p", "--port", type=int, help="TCP port to serve on (default 7000)")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--tracker", help="tracker HOST:PORT, or several replicas of one tracker: HOST:PORT,HOST:PORT (default 127.0.0.1:6969)")
    p.add_argument("--chunk-size", type=int, help=f"bytes per chunk (default {DEFAULT_CHUNK_SIZE})")
    p.add_argument("--cache-dir", type=Path, help="where manifests are cached (default ~/.cache/p2p-seeder)")
    p.add_argument("--tls-cert", type=Path, help="serve peers over TLS with this certificate (and --tls-key)")
    p.add_argument("--tls-key", type=Path, help="private key of --tls-cert")
    p.add_argument("--tls-ca", type=Path, help="with TLS: require leechers to show a certificate signed by this CA")
    p.add_argument("--no-cache", action="store_true", default=None, help="always rehash files at start")
    p.add_argument("--no-super-seed", action="store_true", default=None, help="let every leecher take any chunk, instead of offering each a few chunks no other leecher was offered")
    add_serving_flags(p)
    add_common_flags(p)
    return p


async def serve(settings: SeederSettings) -> int:
    stop = stop_event()
    settings.warn_if_open(log, "seeder")
    registry = CollectorRegistry()
    metrics = SeederMetrics(registry)
    cache = ManifestCache(None if settings.no_cache else settings.cache_dir)
    files = []
    hashing = 0.0
    for path, follow in expand_paths(settings.file):
        seeded, seconds = await asyncio.to_thread(load_file, path, settings.chunk_size, cache, follow)
        hashing += seconds or 0.0
        files.append(seeded)
        log.info(
            "file ready",
            file=seeded.manifest.name,
            size=seeded.manifest.size,
            chunks=seeded.manifest.num_chunks,
            file_id=seeded.file_id,
            cached=seconds is None,
            hash_seconds=None if seconds is None else round(seconds, 4),
        )
    metrics.hash_seconds.set(hashing)
    metrics.files.set(len(files))
    serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    tls = serving_context(settings)
    engine = Engine(settings, metrics.engine, listen=(settings.host, settings.port), server_tls=tls)
    for seeded in files:
        engine.serve(seeded, super_seed=not settings.no_super_seed)
    try:
        await engine.start()
        log.info(
            "seeder listening", host=settings.host, port=settings.port, files=len(files),
            tls="mutual" if tls and settings.tls_ca else bool(tls),
        )
        await engine.serve_until(stop, settings.health_file)
    finally:
        await engine.close()
    log.info("seeder stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = build_settings(SeederSettings, parser(), argv)
    configure_logging(settings.log_format, settings.log_level)
    return run(serve(settings))
