"""One host's engine: what a seeder, a leecher and a per-host peer all are underneath.

It owns, for the host: one registration with the tracker (HolderLink: files added, completed and
dropped while it runs), one peer server on one port (its sources added and removed while it
runs), one verify pool, and one download per file. `serve` shares a complete file, `fetch`
starts (or joins) a download and returns it; its verified chunks can be awaited
(`Download.chunk`) or watched (`Download.watchers`); `drop` stops sharing a file; `close` ends
it all and unregisters. An engine that does not share (`listen=None`) only downloads.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from ..catalog import file_entry
from ..manifest import Manifest, is_file_id
from ..settings import DownloadSettings, EngineSettings
from ..source import ChunkSource, PartialSource
from .download import Download, DownloadMetrics, DownloadResult, Watcher
from .holder_link import HolderLink, LinkMetrics
from .peer_server import Listener, PeerServer, ServingMetrics
from .service import keep_healthy, open_files_for
from .tracker_client import TrackerClient

log = structlog.get_logger()


class EngineMetrics:
    """`p2p_<role>_...`: what the engine serves, its tracker link, and (if it downloads) what it receives."""

    def __init__(self, registry: CollectorRegistry, role: str, downloads: bool = True) -> None:
        self.serving = ServingMetrics(registry, role)
        self.link = LinkMetrics(registry, role)
        self.downloads = DownloadMetrics(registry, role) if downloads else None


class Engine(Watcher):
    def __init__(
        self,
        settings: EngineSettings,
        metrics: EngineMetrics,
        *,
        listen: tuple[str, int] | None,  # where to serve peers; None: share nothing, register nothing
        server_tls: ssl.SSLContext | None = None,
        client_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.listen_on = listen
        self.server_tls = server_tls
        self.client_tls = client_tls
        self.tracker = TrackerClient(list(settings.tracker), secret=settings.secret_bytes())
        self.server = PeerServer.configured(metrics.serving, settings)
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="verify")
        self.downloads: dict[bytes | str, Download] = {}  # under way: by target, and by file id once known
        self.sources: dict[bytes, ChunkSource] = {}
        self.port: int | None = None
        self.link: HolderLink | None = None
        self._listener: Listener | None = None
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task] = []

    @property
    def shares(self) -> bool:
        return self.listen_on is not None

    async def start(self) -> None:
        """Listen for peers and keep the tracker informed (a sharing engine)."""
        if self.listen_on is None:
            return
        host, port = self.listen_on
        open_files_for(self.settings.max_connections)
        self._listener = await self.server.listen(host, port, self.server_tls)
        self.port = self._listener.sockets[0].getsockname()[1]
        self.link = HolderLink(self.tracker, self.port, self.settings.advertise_host, self.metrics.link)
        for source in self.sources.values():
            self.link.add(file_entry(source.manifest), partial=not source.complete)
        self._background = [
            asyncio.create_task(self.link.run(self._stop)),
            asyncio.create_task(self.server.keep_offering(self._stop)),
        ]

    # -- sharing -------------------------------------------------------------------------------

    def serve(self, source: ChunkSource, super_seed: bool = False) -> None:
        """Share `source` (a complete file, or a part file whose chunks are added as verified),
        and register it with the tracker."""
        if not self.shares:
            return
        self.sources[source.raw_id] = source
        self.server.add(source, super_seed)
        if self.link is not None:
            self.link.add(file_entry(source.manifest), partial=not source.complete)

    def drop(self, file_id: bytes) -> None:
        """Share this file no more: its connections' handles are closed, the tracker told."""
        source = self.sources.pop(file_id, None)
        self.server.remove(file_id)
        if self.link is not None:
            self.link.drop(file_id.hex())
        if isinstance(source, PartialSource):
            source.close()

    # -- downloading ---------------------------------------------------------------------------

    def download(
        self, target: str, settings: DownloadSettings, place: Callable[[Manifest], Path],
        known: Callable[[str], Manifest | None] | None = None,
    ) -> Download:
        """A download of `target` that is not started: for `describe`, or for `fetch` to run."""
        assert self.metrics.downloads is not None, "this engine does not download"
        me = (self.settings.advertise_host, self.port) if self.shares and self.port else None
        return Download(
            target, settings, self.tracker, self.metrics.downloads, self.pool, place, me=me, tls=self.client_tls,
            known=known,
        )

    def fetch(
        self, target: str, settings: DownloadSettings, place: Callable[[Manifest], Path],
        known: Callable[[str], Manifest | None] | None = None, described: Download | None = None,
    ) -> Download:
        """The download of `target` (a name or a file id): a new one, or the one under way.
        `place` says where a file goes, from its manifest; `known` gives the manifests this host
        holds already (by file id), so they are not asked of peers; `described`: a download of
        `target` made by `download` and described, not started (its holders and manifest are
        known: it starts from there)."""
        found = self.downloads.get(target) or (self.downloads.get(bytes.fromhex(target)) if is_file_id(target) else None)
        if found is not None:
            return found
        download = described if described is not None and described.task is None else self.download(target, settings, place, known)
        download.watchers.append(self)
        self.downloads[target] = self.downloads[download.target] = download
        download.task = asyncio.create_task(self._run(download))
        return download

    async def _run(self, download: Download) -> DownloadResult:
        try:
            result = await download.run()
        finally:
            for key in [key for key, value in self.downloads.items() if value is download]:
                del self.downloads[key]
        if self.link is not None and download.manifest is not None:
            self.link.complete(download.manifest.file_id)
        return result

    async def started(self, download: Download) -> None:
        """A download has its part file: share what it verifies from now on."""
        manifest = download.manifest
        assert manifest is not None and download.part_path is not None
        self.downloads[manifest.raw_id] = download
        if self.shares:
            self.serve(PartialSource(manifest, download.part_path, download.verified))
            log.info("sharing", port=self.port, verified_chunks=len(download.verified), of=manifest.num_chunks)

    def delivered(self, download: Download, index: int, length: int) -> None:
        assert download.manifest is not None
        source = self.sources.get(download.manifest.raw_id)
        if isinstance(source, PartialSource):
            source.add(index)
            self.server.announce(source.raw_id, index)

    async def serve_until(self, stop: asyncio.Event, health_file: Path | None) -> None:
        """Serve until `stop`, the health file kept fresh once the tracker knows this host."""
        link = self.link
        assert link is not None, "start a sharing engine first"

        async def healthy_once_registered() -> None:
            await link.registered_once.wait()
            await keep_healthy(health_file, stop)

        health = asyncio.create_task(healthy_once_registered())
        try:
            await stop.wait()
        finally:
            health.cancel()

    # -- the end -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every download, stop serving, and unregister."""
        tasks = {d.task for d in self.downloads.values() if d.task is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._stop.set()
        for task in self._background:
            await task
        if self._listener is not None:
            self._listener.close()
        if self.link is not None and self.link.registered:
            await self.link.unregister()
        for source in self.sources.values():
            if isinstance(source, PartialSource):
                source.close()
        self.tracker.close()
        self.pool.shutdown(wait=False)
