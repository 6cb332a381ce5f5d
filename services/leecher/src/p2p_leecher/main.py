"""p2p-leecher: download one file by name or file id from every seeder that holds it."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Literal

import structlog
from prometheus_client import CollectorRegistry, push_to_gateway
from pydantic import Field

from p2p_shared import messages
from p2p_shared.errors import P2PError
from p2p_shared.logs import configure_logging
from p2p_shared.net.download import Download, DownloadResult, Watcher
from p2p_shared.net.engine import Engine
from p2p_shared.net.service import keep_healthy, run, serve_metrics, stop_event
from p2p_shared.net.tls import fetching_context, server_context
from p2p_shared.net.tracker_client import TrackerClient
from p2p_shared.settings import (
    DownloadSettings,
    add_common_flags,
    add_download_flags,
    add_serving_flags,
    build_settings,
)

from .metrics import LeecherMetrics
from .progress import Progress

log = structlog.get_logger()


class LeecherSettings(DownloadSettings):
    target: str | None = Field(None, min_length=1)
    list: bool = False
    output_dir: Path = Path(".")
    progress: Literal["auto", "bar", "log"] = "auto"
    pushgateway: str | None = None
    no_share: bool = False
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(0, ge=0, le=65535)
    seed_time: float = 0.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2p-leecher", description="Download a file from the swarm.")
    p.add_argument("target", nargs="?", help="file name or 64-hex file id (env P2P_TARGET)")
    p.add_argument("--list", action="store_true", default=None, help="list the files on the network and exit")
    p.add_argument("--tracker", help="tracker HOST:PORT, or several replicas of one tracker: HOST:PORT,HOST:PORT (default 127.0.0.1:6969)")
    p.add_argument("-o", "--output-dir", type=Path, help="folder for the downloaded file (default .)")
    add_download_flags(p)
    p.add_argument("--progress", choices=["auto", "bar", "log"], help="auto: a bar on a terminal, log lines otherwise")
    p.add_argument("--tls-ca", type=Path, help="talk TLS to seeders, accepting certificates signed by this CA")
    p.add_argument("--tls-cert", type=Path, help="client certificate for seeders that require one (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="private key of --tls-cert")
    p.add_argument("--pushgateway", help="Pushgateway URL to push the final metrics to (a batch job is not scraped)")
    share = p.add_argument_group("sharing: every verified chunk is served to other peers while downloading")
    share.add_argument("--no-share", action="store_true", default=None, help="download only: serve nothing, register nothing")
    share.add_argument("--listen-port", type=int, help="TCP port to serve peers on; 0 picks a free one")
    share.add_argument("--listen-host", help="address to serve peers on")
    share.add_argument("--seed-time", type=float, help="seconds to keep serving the complete file after the download; negative: until SIGTERM/SIGINT")
    add_serving_flags(share)
    add_common_flags(p)
    return p


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM: since exec, unlike getrusage's figure)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


async def push_metrics(gateway: str | None, registry: CollectorRegistry) -> None:
    """A leecher is a batch job: its final metrics go to a Pushgateway, as Prometheus advises.

    Each run is its own group (instance = host-pid: unique among runs at the same time, on one
    machine or in many containers), so concurrent runs never replace each other's metrics. The
    Pushgateway keeps a group until it is deleted; the alerts look at recent pushes only."""
    if not gateway:
        return
    instance = f"{socket.gethostname()}-{os.getpid()}"
    try:
        await asyncio.to_thread(
            push_to_gateway, gateway, job="p2p_leecher", grouping_key={"instance": instance}, registry=registry, timeout=5
        )
    except OSError as exc:
        log.warning("metrics not pushed", pushgateway=gateway, error=str(exc))


LIST_PAGES = 64  # pages of 16 files `--list` asks for at most: the first 1024 files by id


async def list_files(settings: LeecherSettings) -> int:
    """Print the files on the network, most seeded first, from the tracker's pages (by file id)."""
    tracker = TrackerClient(list(settings.tracker), secret=settings.secret_bytes())
    files: list[messages.FileSummary] = []
    after, total = None, 0
    try:
        for _ in range(LIST_PAGES):
            reply = await tracker.request(messages.ListFiles(after=after))
            if not isinstance(reply, messages.Files):
                raise P2PError(f"tracker answered {reply.type} to a file list request")
            files += reply.files
            after, total = reply.next, reply.total
            if after is None:
                break
    finally:
        tracker.close()
    print(f"{'NAME':40} {'SIZE':>14} {'SEEDERS':>7} {'PARTIAL':>7}  FILE ID")
    for f in sorted(files, key=lambda f: (-f.seeders, -(f.partial or 0), f.name, f.file_id)):
        print(f"{f.name:40} {f.size:>14} {f.seeders:>7} {'-' if f.partial is None else f.partial:>7}  {f.file_id}")
    if total > len(files):
        print(f"... and {total - len(files)} more files (look one up by name or file id)")
    return 0


def sharing_for(settings: LeecherSettings) -> tuple[tuple[str, int] | None, ssl.SSLContext | None]:
    """Where to serve peers, and over what: None when the leecher does not share."""
    if settings.no_share:
        return None, None
    tls = None
    if settings.tls_ca:
        if not (settings.tls_cert and settings.tls_key):
            log.warning("not sharing: serving over TLS needs --tls-cert and --tls-key")
            return None, None
        tls = server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
    return (settings.listen_host, settings.listen_port), tls


class ShowProgress(Watcher):
    """The download's progress: a bar on a terminal, log lines otherwise."""

    def __init__(self, bar: bool) -> None:
        self.bar = bar
        self.progress: Progress | None = None

    async def started(self, download: Download) -> None:
        manifest = download.manifest
        assert manifest is not None
        done = sum(manifest.chunk_span(i)[1] for i in download.verified)
        self.progress = Progress(manifest.name, manifest.size, done, self.bar)
        self.progress.set_peers(download.peer_count)

    def delivered(self, download: Download, index: int, length: int) -> None:
        if self.progress is not None:
            self.progress.advance(length)

    def peers(self, download: Download, count: int) -> None:
        if self.progress is not None:
            self.progress.set_peers(count)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


async def seed(seconds: float, port: int | None, stop: asyncio.Event) -> None:
    """Serve the complete file for `seconds` (negative: until SIGTERM/SIGINT), or until `stop`."""
    if port is None or seconds == 0:
        return
    log.info("seeding", seconds=None if seconds < 0 else seconds, port=port)
    try:
        await asyncio.wait_for(stop.wait(), None if seconds < 0 else seconds)
    except TimeoutError:
        pass


async def fetch(settings: LeecherSettings) -> int:
    registry = CollectorRegistry()
    metrics = LeecherMetrics(registry)
    serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    bar = settings.progress == "bar" or (settings.progress == "auto" and sys.stderr.isatty())
    settings.warn_if_open(log, "leecher")
    listen, server_tls = sharing_for(settings)
    client_tls = fetching_context(settings)
    engine = Engine(settings, metrics.engine, listen=listen, server_tls=server_tls, client_tls=client_tls)
    ended = asyncio.Event()  # the health file is kept fresh until the run ends
    health = asyncio.create_task(keep_healthy(settings.health_file, ended))
    progress = ShowProgress(bar)
    try:
        await engine.start()
        try:
            assert settings.target is not None
            download = engine.fetch(settings.target, settings, place=lambda manifest: settings.output_dir / manifest.name)
            download.watchers.append(progress)
            assert download.task is not None
            try:
                result = await download.task
            finally:
                progress.close()
        except BaseException:
            metrics.downloads.labels("failed").inc()
            await push_metrics(settings.pushgateway, registry)
            raise
        report(result, metrics)
        await push_metrics(settings.pushgateway, registry)
        if engine.link is not None and not await engine.link.settled(10.0):
            log.warning("tracker not told of the completed file yet")
        await seed(settings.seed_time, engine.port, stop_event())  # SIGTERM/SIGINT end the seeding, not the process
    finally:
        ended.set()
        await health
        await engine.close()
    return 0


def report(result: DownloadResult, metrics: LeecherMetrics) -> None:
    """The success lines, at the moment the file is verified (before any seeding)."""
    metrics.downloads.labels("ok").inc()
    metrics.duration.set(result.seconds)
    metrics.size.set(result.size)
    metrics.last_success.set_to_current_time()
    log.info(f"Download complete. File size: {result.size} bytes")
    log.info(f"Successfully downloaded {result.path.name}")
    rate = result.fetched_bytes / max(result.seconds, 1e-9) / 1e6
    log.info(
        "summary",
        path=str(result.path),
        seconds=round(result.seconds, 3),
        fetched_bytes=result.fetched_bytes,
        from_seeders_bytes=result.from_seeders,
        mb_per_s=round(rate, 1),
        peak_rss_mb=peak_rss_mb(),
    )


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    settings = build_settings(LeecherSettings, cli, argv)
    configure_logging(settings.log_format, settings.log_level)
    if settings.list:
        return run(list_files(settings))
    if not settings.target:
        cli.error("give a file name or file id to download (or --list)")
    return run(fetch(settings), loop_factory=fast_loop())


def fast_loop():
    """uvloop where it is installed: it cut the leecher's CPU time per GiB by about a quarter
    here (python -m bench.uvloop_ab). The seeder keeps asyncio's loop for its sendfile."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
