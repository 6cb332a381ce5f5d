"""A leecher's upload side: it serves every chunk it has verified, over the same peer protocol
and with the same limits as a seeder, and registers with the tracker as a partial holder of
the file, then as a complete one. After the download it goes on serving for `seed_time`
seconds (negative: until SIGTERM or SIGINT), then unregisters."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import structlog

from p2p_shared.manifest import Manifest
from p2p_shared.messages import FileEntry
from p2p_shared.net.holder_link import HolderLink
from p2p_shared.net.peer_server import PeerServer
from p2p_shared.net.tracker_client import TrackerClient
from p2p_shared.settings import ServingSettings
from p2p_shared.source import PartialSource

from .metrics import LeecherMetrics

log = structlog.get_logger()


class Sharing:
    def __init__(
        self,
        tracker: TrackerClient,
        settings: ServingSettings,
        metrics: LeecherMetrics,
        *,
        host: str = "0.0.0.0",
        port: int = 0,  # 0: any free port
        seed_time: float = 0.0,
        tls: ssl.SSLContext | None = None,  # a server context: our certificate, peers' checked against the CA
    ) -> None:
        self.tracker = tracker
        self.settings = settings
        self.metrics = metrics
        self.host, self.listen_port, self.seed_time, self.tls = host, port, seed_time, tls
        self.port: int | None = None
        self._source: PartialSource | None = None
        self._server: PeerServer | None = None
        self._listener: asyncio.Server | None = None
        self._link: HolderLink | None = None
        self._link_task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    async def start(self, manifest: Manifest, path: Path, verified: set[int]) -> None:
        """Serve `path`'s verified chunks and register as a holder of the file."""
        self._source = PartialSource(manifest, path, verified)
        self._server = PeerServer.configured([self._source], self.metrics.serving, self.settings)
        self._listener = await self._server.listen(self.host, self.listen_port, self.tls)
        self.port = self._listener.sockets[0].getsockname()[1]
        entry = FileEntry(file_id=manifest.file_id, name=manifest.name, size=manifest.size, chunk_size=manifest.chunk_size)
        self._link = HolderLink(
            self.tracker, self.port, self.settings.advertise_host, [entry], self.metrics.link, partial=not self._source.complete
        )
        self._link_task = asyncio.create_task(self._link.run(self._stop))
        log.info("sharing", port=self.port, verified_chunks=len(verified), of=manifest.num_chunks)

    def verified(self, index: int) -> None:
        """A chunk verified and written: serve it, and tell the peers that follow this file."""
        if self._source is None or self._server is None:
            return
        self._source.add(index)
        self._server.announce(self._source.raw_id, index)

    async def completed(self) -> None:
        if self._link is not None:
            await self._link.completed()

    async def seed(self, stop: asyncio.Event) -> None:
        """Serve the complete file for `seed_time` seconds, or until `stop`."""
        seconds = self.seed_time
        if self._listener is None or seconds == 0:
            return
        log.info("seeding", seconds=None if seconds < 0 else seconds, port=self.port)
        try:
            await asyncio.wait_for(stop.wait(), None if seconds < 0 else seconds)
        except TimeoutError:
            pass

    async def close(self) -> None:
        self._stop.set()
        if self._link_task is not None:
            await self._link_task
        if self._listener is not None:
            self._listener.close()
        if self._link is not None and self._link.registered:
            await self._link.unregister()
        if self._source is not None:
            self._source.close()
