"""p2p-leecher: download one file by name or file id from every seeder that holds it."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Literal

import structlog
from prometheus_client import CollectorRegistry, push_to_gateway
from pydantic import Field, field_validator

from p2p_shared import messages
from p2p_shared.errors import P2PError
from p2p_shared.logs import configure_logging
from p2p_shared.net.service import keep_healthy, run, serve_metrics, stop_event
from p2p_shared.net.tls import client_context, server_context
from p2p_shared.net.tracker_client import TrackerClient
from p2p_shared.settings import ServingSettings, add_common_flags, add_serving_flags, build_settings, parse_trackers

from .download import Download, DownloadOptions, DownloadResult
from .metrics import LeecherMetrics
from .sharing import Sharing

log = structlog.get_logger()


class LeecherSettings(ServingSettings):
    target: str | None = Field(None, min_length=1)
    list: bool = False
    tracker: str = "127.0.0.1:6969"
    output_dir: Path = Path(".")
    min_seeders: int = Field(1, ge=1)
    wait: float = Field(30.0, ge=0)
    wait_for_file: bool = False
    max_peers: int = Field(8, ge=1, le=50)
    pipeline_depth: int = Field(4, ge=1, le=64)
    chunk_timeout: float = Field(30.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    max_bad_chunks: int = Field(3, ge=1)
    progress: Literal["auto", "bar", "log"] = "auto"
    pushgateway: str | None = None
    max_download_rate: float = Field(0, ge=0)
    no_share: bool = False
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(0, ge=0, le=65535)
    seed_time: float = 0.0

    @field_validator("tracker")
    @classmethod
    def _tracker(cls, value: str) -> str:
        parse_trackers(value)
        return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2p-leecher", description="Download a file from the swarm.")
    p.add_argument("target", nargs="?", help="file name or 64-hex file id (env P2P_TARGET)")
    p.add_argument("--list", action="store_true", default=None, help="list the files on the network and exit")
    p.add_argument("--tracker", help="tracker HOST:PORT, or several replicas of one tracker: HOST:PORT,HOST:PORT (default 127.0.0.1:6969)")
    p.add_argument("-o", "--output-dir", type=Path, help="folder for the downloaded file (default .)")
    p.add_argument("--min-seeders", type=int, help="seeders to wait for before starting (default 1)")
    p.add_argument("--wait", type=float, help="seconds to wait for seeders at start, and without a verified chunk during the download, before giving up (default 30)")
    p.add_argument("--wait-for-file", action="store_true", default=None, help="wait (--wait seconds) for a file the tracker does not know yet, instead of failing at once")
    p.add_argument("--max-peers", type=int, help="seeders downloaded from at once (default 8)")
    p.add_argument("--pipeline-depth", type=int, help="requests in flight per seeder (default 4)")
    p.add_argument("--chunk-timeout", type=float, help="seconds a seeder may stay silent with requests pending (default 30)")
    p.add_argument("--connect-timeout", type=float, help="seconds to connect and greet a seeder (default 5)")
    p.add_argument("--max-bad-chunks", type=int, help="bad chunks before a seeder is dropped (default 3)")
    p.add_argument("--progress", choices=["auto", "bar", "log"], help="auto: a bar on a terminal, log lines otherwise")
    p.add_argument("--max-download-rate", type=float, help="bytes/s from all seeders together; 0 (default) is unlimited")
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
    tracker = TrackerClient(parse_trackers(settings.tracker), secret=settings.secret_bytes())
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


def sharing_for(settings: LeecherSettings, tracker: TrackerClient, metrics: LeecherMetrics) -> Sharing | None:
    if settings.no_share:
        return None
    tls = None
    if settings.tls_ca:
        if not (settings.tls_cert and settings.tls_key):
            log.warning("not sharing: serving over TLS needs --tls-cert and --tls-key")
            return None
        tls = server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
    return Sharing(
        tracker, settings, metrics, host=settings.listen_host, port=settings.listen_port, seed_time=settings.seed_time, tls=tls
    )


async def fetch(settings: LeecherSettings) -> int:
    registry = CollectorRegistry()
    metrics = LeecherMetrics(registry)
    serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    bar = settings.progress == "bar" or (settings.progress == "auto" and sys.stderr.isatty())
    options = DownloadOptions(
        output_dir=settings.output_dir,
        min_seeders=settings.min_seeders,
        wait=settings.wait,
        wait_for_file=settings.wait_for_file,
        max_peers=settings.max_peers,
        depth=settings.pipeline_depth,
        chunk_timeout=settings.chunk_timeout,
        connect_timeout=settings.connect_timeout,
        max_bad_chunks=settings.max_bad_chunks,
        progress_bar=bar,
        max_download_rate=settings.max_download_rate,
        secret=settings.secret_bytes(),
        tls=client_context(settings.tls_ca, settings.tls_cert, settings.tls_key) if settings.tls_ca else None,
    )
    settings.warn_if_open(log, "leecher")
    tracker = TrackerClient(parse_trackers(settings.tracker), secret=settings.secret_bytes())
    sharing = sharing_for(settings, tracker, metrics)
    ended = asyncio.Event()  # the health file is kept fresh until the run ends
    health = asyncio.create_task(keep_healthy(settings.health_file, ended))
    try:
        try:
            assert settings.target is not None
            result = await Download(tracker, options, metrics, sharing).run(settings.target)
        except BaseException:
            metrics.downloads.labels("failed").inc()
            await push_metrics(settings.pushgateway, registry)
            raise
        report(result, metrics)
        await push_metrics(settings.pushgateway, registry)
        if sharing is not None:
            await sharing.completed()
            await sharing.seed(stop_event())  # SIGTERM/SIGINT end the seeding, not the process
    finally:
        ended.set()
        await health
        if sharing is not None:
            await sharing.close()
        tracker.close()
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
