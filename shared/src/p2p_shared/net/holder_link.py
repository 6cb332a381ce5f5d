"""A holder's registration with the tracker: register, heartbeat at the interval the tracker
asks for, register again whenever the tracker has forgotten us, unregister on the way out.
Seeders hold complete files; a sharing leecher registers its file as partial, then as complete."""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import CollectorRegistry, Counter

from .. import messages
from ..errors import P2PError, TrackerUnavailable
from ..limits import MAX_FILES_PER_REGISTER
from .tracker_client import TrackerClient

log = structlog.get_logger()


class LinkMetrics:
    def __init__(self, registry: CollectorRegistry, role: str) -> None:
        self.heartbeats = Counter(
            f"p2p_{role}_heartbeats_total", "Heartbeats sent to the tracker, by result", ["result"], registry=registry
        )
        self.registrations = Counter(
            f"p2p_{role}_registrations_total", "Registrations sent to the tracker, by result", ["result"], registry=registry
        )
        for result in ("ok", "unknown", "timeout"):
            self.heartbeats.labels(result)
        for result in ("ok", "refused"):
            self.registrations.labels(result)


class HolderLink:
    def __init__(
        self,
        client: TrackerClient,
        port: int,
        host: str | None,
        entries: list[messages.FileEntry],
        metrics: LinkMetrics,
        partial: bool = False,
    ) -> None:
        self.client = client
        self.port = port
        self.host = host
        self.entries = entries
        self.metrics = metrics
        self.partial = partial
        self.interval = 5.0  # until the tracker tells us its own
        self.registered = False
        self.registered_once = asyncio.Event()

    async def register(self) -> None:
        for start in range(0, max(1, len(self.entries)), MAX_FILES_PER_REGISTER):
            batch = self.entries[start : start + MAX_FILES_PER_REGISTER]
            reply = await self.client.request(
                messages.Register(port=self.port, host=self.host, files=batch, partial=self.partial)
            )
            if isinstance(reply, messages.ErrorReply):
                self.metrics.registrations.labels("refused").inc()
                raise P2PError(f"tracker refused registration: {reply.code}: {reply.message}")
            if isinstance(reply, messages.Ack):
                self.interval = reply.interval
        self.metrics.registrations.labels("ok").inc()
        self.registered = True
        self.registered_once.set()
        log.info(
            "registered with tracker", tracker=self.client.label, files=len(self.entries), interval=self.interval,
            partial=self.partial,
        )

    async def completed(self) -> None:
        """The partial file is now whole: say so (or leave it to the next beat if the tracker is away)."""
        self.partial = False
        try:
            await self.register()
        except (TrackerUnavailable, P2PError) as exc:
            self.registered = False
            log.warning("tracker not told of the completed file yet", error=str(exc))

    async def beat(self) -> None:
        # Retries stop before the next beat is due: that beat is the retry.
        reply = await self.client.request(messages.Heartbeat(port=self.port, host=self.host), budget=self.interval)
        if isinstance(reply, messages.ErrorReply) and reply.code == "unknown_seeder":
            self.metrics.heartbeats.labels("unknown").inc()
            log.info("tracker forgot this holder; registering again")
            self.registered = False
            await self.register()
        elif isinstance(reply, messages.Ack):
            self.metrics.heartbeats.labels("ok").inc()
            self.interval = reply.interval

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            try:
                await (self.beat() if self.registered else self.register())
            except TrackerUnavailable as exc:
                self.metrics.heartbeats.labels("timeout").inc()
                log.warning(str(exc))
            except P2PError as exc:
                log.error(str(exc))
            try:  # beats keep their cadence however long the last one took
                await asyncio.wait_for(stop.wait(), max(0.0, started + self.interval - loop.time()))
            except TimeoutError:
                pass

    async def unregister(self) -> None:
        try:
            reply = await asyncio.wait_for(self.client.request(messages.Unregister(port=self.port, host=self.host)), 2.0)
        except (TrackerUnavailable, TimeoutError):
            log.warning("tracker did not confirm unregistration; it will expire this holder")
            return
        if isinstance(reply, messages.ErrorReply):
            log.warning("tracker refused unregistration; it will expire this holder", code=reply.code, reason=reply.message)
        else:
            log.info("unregistered from tracker")
