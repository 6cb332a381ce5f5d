"""A holder's registration with the tracker: one registration for the host, whose files come,
complete, and go while it runs.

`add` (complete or partial), `complete` and `drop` change the file set; the link tells the
tracker at once (`register` for new and completed files, `drop` for the ones that went), and
otherwise heartbeats at the interval the tracker asks for. A tracker that forgot us (it
restarted, or we were away) gets every file again; a change the tracker did not hear goes out
again with the next round. `unregister` on the way out.
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import CollectorRegistry, Counter

from .. import messages
from ..errors import HolderUnknown, P2PError, TrackerRejected, TrackerUnavailable
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
    def __init__(self, client: TrackerClient, port: int, host: str | None, metrics: LinkMetrics) -> None:
        self.client = client
        self.port = port
        self.host = host
        self.metrics = metrics
        self.files: dict[str, tuple[messages.FileEntry, bool]] = {}  # file id -> (entry, held in part)
        self._changes: dict[str, bool | None] = {}  # file id -> partial flag to tell, or None: dropped
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()  # no change waits to be told
        self._settled.set()
        self.interval = 5.0  # until the tracker tells us its own
        self.registered = False
        self.registered_once = asyncio.Event()

    # -- the file set --------------------------------------------------------------------------

    def add(self, entry: messages.FileEntry, partial: bool = False) -> None:
        self.files[entry.file_id] = (entry, partial)
        self._change(entry.file_id, partial)

    def complete(self, file_id: str) -> None:
        """A file held in part is now whole."""
        held = self.files.get(file_id)
        if held is not None and held[1]:
            self.files[file_id] = (held[0], False)
            self._change(file_id, False)

    def drop(self, file_id: str) -> None:
        if self.files.pop(file_id, None) is not None:
            self._change(file_id, None)

    def _change(self, file_id: str, partial: bool | None) -> None:
        self._changes[file_id] = partial
        self._settled.clear()
        self._changed.set()

    async def settled(self, timeout: float) -> bool:
        """Wait until the tracker heard every change so far; False if it did not within `timeout`."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- talking to the tracker ----------------------------------------------------------------

    async def _register(self, entries: list[messages.FileEntry], partial: bool) -> None:
        for start in range(0, max(1, len(entries)), MAX_FILES_PER_REGISTER):
            batch = entries[start : start + MAX_FILES_PER_REGISTER]
            try:
                reply = await self.client.request(
                    messages.Register(port=self.port, host=self.host, files=batch, partial=partial)
                )
            except TrackerRejected as exc:
                self.metrics.registrations.labels("refused").inc()
                raise P2PError(f"tracker refused registration: {exc.code}: {exc.reason}") from None
            if isinstance(reply, messages.Ack):
                self.interval = reply.interval
        self.metrics.registrations.labels("ok").inc()

    async def register(self) -> None:
        """Every file, the complete ones first (a holder with none registers with none)."""
        self._changes.clear()
        complete = [entry for entry, partial in self.files.values() if not partial]
        partial = [entry for entry, partial in self.files.values() if partial]
        if complete or not partial:
            await self._register(complete, False)
        if partial:
            await self._register(partial, True)
        self.registered = True
        self.registered_once.set()
        log.info(
            "registered with tracker", tracker=self.client.label, files=len(self.files), partial=len(partial),
            interval=self.interval,
        )

    async def _tell(self) -> None:
        """The changes since the last round: new and completed files registered, dropped ones dropped."""
        changes, self._changes = self._changes, {}
        try:
            for partial in (False, True):
                entries = [self.files[f][0] for f, p in changes.items() if p is partial and f in self.files]
                if entries:
                    await self._register(entries, partial)
            dropped = [f for f, p in changes.items() if p is None]
            for start in range(0, len(dropped), MAX_FILES_PER_REGISTER):
                await self.client.request(
                    messages.Drop(port=self.port, host=self.host, files=dropped[start : start + MAX_FILES_PER_REGISTER])
                )
            if dropped:
                log.info("dropped files at the tracker", files=len(dropped))
        except BaseException:
            self._changes = {**changes, **self._changes}  # told again next round, newer news first
            raise

    async def claim(self, key: str, release: bool = False) -> messages.Lease:
        """Take (or renew, or give back) the tracker's lease `key` for this holder: the answer
        says who holds it now, whether that is us, and for how many seconds. TrackerUnavailable
        and TrackerRejected as for any request."""
        reply = await self.client.request(messages.Claim(key=key, port=self.port, host=self.host, release=release))
        if not isinstance(reply, messages.Lease):
            raise TrackerRejected("malformed", f"unexpected {reply.type} answer to claim")
        return reply

    async def beat(self) -> None:
        # Retries stop before the next beat is due: that beat is the retry.
        reply = await self.client.request(messages.Heartbeat(port=self.port, host=self.host), budget=self.interval)
        self.metrics.heartbeats.labels("ok").inc()
        if isinstance(reply, messages.Ack):
            self.interval = reply.interval

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        beat_at = loop.time()
        while not stop.is_set():
            self._changed.clear()
            started = loop.time()
            try:
                if not self.registered:
                    await self.register()
                    beat_at = loop.time() + self.interval
                elif self._changes:
                    await self._tell()
                elif loop.time() >= beat_at:
                    beat_at = loop.time() + self.interval  # beats keep their cadence however long the last one took
                    await self.beat()
                if not self._changes:
                    self._settled.set()
            except HolderUnknown:
                self.metrics.heartbeats.labels("unknown").inc()
                log.info("tracker forgot this holder; registering again")
                self.registered = False
                continue
            except TrackerUnavailable as exc:
                self.metrics.heartbeats.labels("timeout").inc()
                log.warning(str(exc))
                beat_at = started + self.interval
            except P2PError as exc:
                log.error(str(exc))
                beat_at = started + self.interval
            if self._changes and self.registered and not self._changed.is_set():
                wait = max(0.0, min(beat_at, loop.time() + 1.0) - loop.time())  # failed news: again within a second
            else:
                wait = max(0.0, beat_at - loop.time())
            stopped = asyncio.create_task(stop.wait())
            changed = asyncio.create_task(self._changed.wait())
            try:
                await asyncio.wait([stopped, changed], timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                changed.cancel()

    async def unregister(self) -> None:
        try:
            await asyncio.wait_for(self.client.request(messages.Unregister(port=self.port, host=self.host)), 2.0)
        except (TrackerUnavailable, TimeoutError):
            log.warning("tracker did not confirm unregistration; it will expire this holder")
            return
        except TrackerRejected as exc:
            log.warning("tracker refused unregistration; it will expire this holder", code=exc.code, reason=exc.reason)
            return
        log.info("unregistered from tracker")
