"""One file's download: find holders, fetch and check the manifest, pull chunks from all of them.

The decisions are sans-IO (p2p_shared.swarm for the conversations with peers, .supervisor for
whom to meet and when to give up); this is their I/O. The supervisor loop here looks the file up
again while it downloads, starts a worker (worker.py) per peer it should talk to, and ends
workers' stories: chunks back to the plan, back-off or ban. Chunks are hashed and written at
their offsets by the connection's thread that received them (`precheck`, plain TCP and TLS
alike); the engine's verify pool takes what that thread left unchecked. Who else wants to know what happens (the engine,
which serves the verified chunks; a progress bar; an HTTP reader) watches: `Watcher`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from .. import messages, wire
from ..errors import (
    DownloadError,
    P2PError,
    FileNotFound,
    FinalExists,
    ManifestError,
    NoHolder,
    PeerError,
    RemoteProtocolError,
    TrackerRejected,
    TrackerUnavailable,
    TrackerUnreachable,
)
from ..manifest import Manifest, is_file_id
from ..ratelimit import TokenBucket
from ..settings import DownloadSettings
from ..storage import PartFile, verified_chunks
from ..supervisor import Supervisor
from ..swarm import Delivered, Effect, Rejected, Returned, Swarm
from .peer_client import PeerConnection, open_peer
from .tracker_client import TrackerClient
from .worker import PeerWorker

log = structlog.get_logger()
PeerKey = tuple[str, int]
SPARE_SECONDS = 5.0  # a connection kept from the manifest waits this long for its worker
RETRY_REASONS = ("hash_mismatch", "timeout", "connection", "peer_error", "protocol", "bad_peer")


class DownloadMetrics:
    """`p2p_<role>_...`: what a host's downloads receive, and what goes wrong."""

    def __init__(self, registry: CollectorRegistry, role: str) -> None:
        self.chunks = Counter(f"p2p_{role}_chunks_received_total", "Chunks received and verified", registry=registry)
        self.bytes = Counter(
            f"p2p_{role}_bytes_received_total",
            "Verified chunk bytes received, by source: a complete holder (seeder) or a partial one (peer)",
            ["source"],
            registry=registry,
        )
        self.retries = Counter(f"p2p_{role}_retries_total", "Chunks put back in the plan, by reason", ["reason"], registry=registry)
        self.hash_failures = Counter(
            f"p2p_{role}_hash_failures_total", "Chunks whose SHA-256 did not match the manifest", registry=registry
        )
        self.bad_manifests = Counter(
            f"p2p_{role}_bad_manifests_total", "Manifests refused: not hashing to the file id, or with absurd values",
            registry=registry,
        )
        self.peers_dropped = Counter(
            f"p2p_{role}_peers_dropped_total", "Peers given up on for a download, by reason", ["reason"], registry=registry
        )
        self.peers_active = Gauge(f"p2p_{role}_peers_active", "Peers being downloaded from", registry=registry)
        # Known label values start at 0, so dashboards and alerts see the series before the first event.
        for source in ("seeder", "peer"):
            self.bytes.labels(source)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        self.peers_dropped.labels("bad_data")


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    seconds: float
    fetched_bytes: int
    from_seeders: int = 0  # of the fetched bytes, those a complete holder sent


class Watcher:
    """What a download tells those who follow it; each method is called on the event loop."""

    async def started(self, download: Download) -> None:
        """The manifest is known and the part file reserved (`download.part_path`), holding
        `download.verified`; or the final file was there already, complete."""

    def delivered(self, download: Download, index: int, length: int) -> None:
        """A chunk verified and written."""

    def peers(self, download: Download, count: int) -> None:
        """Peers being downloaded from."""


def verify_and_write(manifest: Manifest, part: PartFile, index: int, data: memoryview) -> bool:
    """Runs on the verify pool: SHA-256 and pwrite both release the GIL."""
    offset, length = manifest.chunk_span(index)
    if len(data) != length or sha256(data).digest() != manifest.chunk_digest(index):
        return False
    part.write(offset, data)
    return True


class Download:
    def __init__(
        self,
        target: str,
        settings: DownloadSettings,
        tracker: TrackerClient,
        metrics: DownloadMetrics,
        pool: Executor,
        place: Callable[[Manifest], Path],
        *,
        me: tuple[str | None, int] | None = None,  # (advertised host, port) we serve on, if we share
        tls: ssl.SSLContext | None = None,
        known: Callable[[str], Manifest | None] | None = None,  # manifests this host holds, by file id
    ) -> None:
        self.target = target
        self.settings = settings
        self.tracker = tracker
        self.metrics = metrics
        self.pool = pool
        self.place = place  # the final path of a file, from its manifest
        self.me = me
        self.shares = me is not None
        self.tls = tls
        self.known = known or (lambda file_id: None)
        self.watchers: list[Watcher] = []
        self.task: asyncio.Task[DownloadResult] | None = None  # the engine's task running it
        self.whole = False  # someone wants the whole file, not only what readers read (prefetch)
        self.preallocate = True  # claim the file's disk space before fetching (storage.PartFile.reserve)
        self.manifest: Manifest | None = None
        self.path: Path | None = None  # the final path
        self.part_path: Path | None = None  # where the bytes are while downloading
        self.swarm: Swarm | None = None
        self.verified: set[int] = set()
        self.fetched_bytes = 0
        self.from_seeders = 0
        self.peer_count = 0
        self._seeders = self._peers = 0
        loop = asyncio.get_running_loop()
        self._supervisor = Supervisor(settings.wait, settings.max_peers, settings.refresh_interval, loop.time())
        self._part: PartFile | None = None
        self._writes: set[Future] = set()
        self._workers: dict[PeerKey, PeerWorker] = {}
        self._spare: dict[PeerKey, PeerConnection] = {}  # open, greeted, not yet a worker's
        self._spare_timer: asyncio.TimerHandle | None = None
        # When announcements are due (Swarm.take_due), and the timer set for then (uvloop's has no when()).
        self._flush_timer: tuple[float, asyncio.Handle] | None = None
        self._finished = asyncio.Event()
        self._ready: asyncio.Future[None] = loop.create_future()  # the manifest known, the part file open
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even if no one waits
        self._chunk_waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._readers: dict[object, int] = {}  # reader -> the chunk it waits for next

    # -- finding the file -------------------------------------------------------------------

    async def _lookup(self, target: str, budget: float | None = None) -> messages.Peers:
        key = {"file_id": target} if is_file_id(target) else {"name": target}
        me = {"host": self.me[0], "port": self.me[1]} if self.me else {}
        reply = await self.tracker.request(messages.Lookup(**key, **me), budget)
        if not isinstance(reply, messages.Peers):
            raise TrackerRejected("malformed", f"unexpected {reply.type} answer to a lookup")
        return reply

    def _meet(self, reply: messages.Peers) -> tuple[list[PeerKey], list[PeerKey]]:
        complete = [tuple(p) for p in reply.peers]
        partial = [tuple(p) for p in reply.partial or ()]
        self._supervisor.meet(complete, partial)
        return complete, partial  # type: ignore[return-value]

    async def find_holders(self) -> tuple[messages.FileEntry, list[PeerKey], list[PeerKey]]:
        """Wait (at most `wait` seconds) until `min_seeders` live holders have the file; its
        entry and its complete and partial holders.

        A file the tracker does not know is reported after one lookup, unless asked to wait
        for it; a tracker that cannot be reached at all (no such host, closed port) at once."""
        loop = asyncio.get_running_loop()
        opts, target = self.settings, self.target
        deadline = loop.time() + opts.wait
        delay, found, said = 0.25, 0, False
        while True:
            try:
                reply = await self._lookup(target)
                complete, partial = self._meet(reply)
                found = len(complete) + len(partial)
                if reply.file is not None and (found >= opts.min_seeders or self.known(reply.file.file_id)):
                    return reply.file, complete, partial
                if reply.file is None and not opts.wait_for_file:
                    raise FileNotFound(
                        f"{target} is not on the network: tracker {self.tracker.label} knows no live holder of it"
                        " (`p2p-leecher --list` shows the files it knows; --wait-for-file waits for it)"
                    )
            except TrackerUnreachable:
                raise
            except TrackerUnavailable:
                if loop.time() >= deadline:
                    raise
            if loop.time() >= deadline:
                if found == 0:
                    raise NoHolder(f"no seeder holds {target} (waited {opts.wait:g}s)")
                raise NoHolder(f"only {found} of {opts.min_seeders} seeders hold {target} (waited {opts.wait:g}s)")
            if not said:
                log.info("waiting for seeders", target=target, found=found, wanted=opts.min_seeders)
                said = True
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 2.0)

    async def fetch_manifest(self, file_id: str, peers: list[PeerKey]) -> Manifest:
        """The manifest from the first holder whose copy hashes to the file id."""
        last = "no seeder to ask"
        opts = self.settings
        for host, port in peers:
            try:
                conn = await open_peer(
                    host, port, chunk_size=1, depth=0, timeout=opts.connect_timeout, secret=opts.secret_bytes(),
                    tls=self.tls, shares=self.shares, first=(wire.GetManifest(bytes.fromhex(file_id)),),
                )
                try:
                    data = await conn.expect(wire.ManifestData, opts.chunk_timeout)
                    manifest = Manifest.decode_verified(data.data, file_id)
                except BaseException:
                    conn.close()
                    raise
                # Kept for the download's worker to this peer: one connection set-up less before
                # the first chunk (what a reader waiting for its first byte notices); closed if no
                # download takes it soon.
                self._spare[(host, port)] = conn
                loop = asyncio.get_running_loop()
                self._spare_timer = loop.call_later(SPARE_SECONDS, self.close)
                return manifest
            except (PeerError, RemoteProtocolError) as exc:
                last = str(exc)
                if isinstance(exc, ManifestError):
                    self.metrics.bad_manifests.inc()
                log.warning("manifest refused", peer=f"{host}:{port}", error=last)
        raise NoHolder(f"no seeder sent a valid manifest for {file_id[:16]}: {last}")

    async def describe(self) -> Manifest:
        """The file's manifest: found through the tracker, then taken from this host if it holds
        the file, else from the first holder whose copy hashes to the file id. Once known, it
        is not looked for again: a download described first (to answer HEAD, say) starts at once."""
        if self.manifest is not None:
            return self.manifest
        entry, complete, partial = await self.find_holders()
        self._seeders, self._peers = len(complete), len(partial)
        manifest = self.known(entry.file_id)
        if manifest is None:
            # Complete holders first: partial ones may be leechers that have nothing yet.
            manifest = await self.fetch_manifest(entry.file_id, complete + partial)
        self.manifest = manifest
        return manifest

    # -- the download -----------------------------------------------------------------------

    async def _run(self) -> DownloadResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        opts = self.settings
        manifest = await self.describe()
        final = self.path = self.place(manifest)
        log.info(
            "downloading", file=manifest.name, size=manifest.size, chunks=manifest.num_chunks, file_id=manifest.file_id,
            seeders=self._seeders, peers=self._peers,
        )
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create output folder {final.parent}: {exc.strerror}") from None
        if final.exists():
            same_size = final.stat().st_size == manifest.size  # (an empty manifest has no chunk to compare)
            if same_size and len(await asyncio.to_thread(verified_chunks, final, manifest)) == manifest.num_chunks:
                log.info("already downloaded; verified the existing copy", path=str(final))
                self.verified = set(range(manifest.num_chunks))
                self.part_path = final
                self._finished.set()
                for watcher in self.watchers:
                    await watcher.started(self)
                self._ready.set_result(None)
                return DownloadResult(final, manifest.size, loop.time() - started, 0)
            raise DownloadError(f"{final} already exists and differs from {manifest.name}; move it or pick another -o")
        part = self._part = PartFile(final, manifest.size)
        done = await asyncio.to_thread(part.verified_chunks, manifest) if part.resumed else set()
        part.reserve(keep=bool(done), allocate=self.preallocate)
        if done:
            log.info("resuming", path=str(part.path), verified_chunks=len(done), of=manifest.num_chunks)
        self.part_path = part.path
        limit = TokenBucket(opts.max_download_rate, started) if opts.max_download_rate else None
        self.swarm = Swarm(
            manifest, depth=opts.pipeline_depth, max_bad=opts.max_bad_chunks, chunk_timeout=opts.chunk_timeout,
            shares=self.shares, limit=limit, done=done,
        )
        self.verified = self.swarm.verified
        try:
            for watcher in self.watchers:
                await watcher.started(self)
            self._ready.set_result(None)
            self._prioritize()
            await self._supervise()
            await self._drain_writes()
            try:
                part.finish()
            except FinalExists:
                # Another leecher of the same file into the same folder finished first.
                if len(await asyncio.to_thread(verified_chunks, final, manifest)) != manifest.num_chunks:
                    raise
                part.path.unlink(missing_ok=True)
                log.info("another leecher finished this file first; its copy verified, ours dropped", path=str(final))
        finally:
            await self._drain_writes()
            part.close()
        return DownloadResult(final, manifest.size, loop.time() - started, self.fetched_bytes, self.from_seeders)

    # -- readers: waiting for chunks, and the order they want them in ---------------------------

    async def ready(self) -> Manifest:
        """The manifest, once the download has a place for the bytes (or the error that ended it)."""
        await asyncio.shield(self._ready)
        assert self.manifest is not None
        return self.manifest

    async def chunk(self, index: int) -> None:
        """Return once chunk `index` is verified and written; the download's error if it ends first."""
        if index in self.verified:
            return
        if self._ready.done() and self._ready.exception() is not None:
            raise self._ready.exception()  # type: ignore[misc]
        waiter = asyncio.get_running_loop().create_future()
        self._chunk_waiters.setdefault(index, []).append(waiter)
        await waiter

    def want(self, reader: object, index: int | None, ahead: int = 4) -> None:
        """`reader` reads from chunk `index` on (None: it is gone): the chunks just ahead of every
        reader's position are fetched before the rest (deadlines, as libtorrent's streaming)."""
        if index is None:
            self._readers.pop(reader, None)
        else:
            self._readers[reader] = index
        self._prioritize(ahead)

    @property
    def readers(self) -> int:
        return len(self._readers)

    def _prioritize(self, ahead: int = 4) -> None:
        if self.swarm is None:
            return
        urgent: list[int] = []
        for step in range(ahead):  # each reader's next chunk, then each one's second, ...
            for position in self._readers.values():
                if position + step < self.swarm.manifest.num_chunks and position + step not in urgent:
                    urgent.append(position + step)
        self.swarm.prioritize([i for i in urgent if i not in self.verified], asyncio.get_running_loop().time())
        self.flush()

    def _ended(self, error: BaseException | None) -> None:
        """Wake every waiter: with the error, if the download failed."""
        if error is None:
            error = DownloadError(f"{self.target}: the download ended before the chunk came")
        if not self._ready.done():
            self._ready.set_exception(error)
        for waiters in self._chunk_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
        self._chunk_waiters.clear()

    async def run(self) -> DownloadResult:
        try:
            result = await self._run()
        except BaseException as exc:
            self._ended(exc if isinstance(exc, P2PError) else DownloadError(f"{self.target}: download stopped"))
            raise
        self._ended(None)
        return result

    # -- what workers need (worker.SwarmHost) -------------------------------------------------

    def precheck(self, index: int, data: memoryview) -> bool | None:
        """Called by a connection's receiving thread as a chunk arrives: hash it and write it if
        it matches, so that it costs no hop to the pool. Only bytes that match the manifest are
        written, so a copy the swarm then has no use for (an endgame duplicate, a chunk it did
        not ask for) writes what the file holds there anyway. None: not checked here (the
        download is not under way, or the chunk is verified already)."""
        manifest, part, swarm = self.manifest, self._part, self.swarm
        if manifest is None or part is None or swarm is None or not 0 <= index < manifest.num_chunks:
            return None
        if swarm.plan.is_done(index):
            return None
        return verify_and_write(manifest, part, index, data)

    def verify(self, index: int, data: memoryview) -> Future[bool]:
        assert self.manifest is not None and self._part is not None
        outcome = self.pool.submit(verify_and_write, self.manifest, self._part, index, data)
        self._writes.add(outcome)
        outcome.add_done_callback(self._writes.discard)
        return outcome

    def record(self, peer: PeerKey, effect: Effect) -> None:
        match effect:
            case Delivered(index=index, length=length, origin=origin):
                self.fetched_bytes += length
                self.from_seeders += length if origin else 0
                self.metrics.chunks.inc()
                self.metrics.bytes.labels("seeder" if origin else "peer").inc(length)
                assert self.swarm is not None
                self._supervisor.delivered(peer, asyncio.get_running_loop().time())
                for watcher in self.watchers:
                    watcher.delivered(self, index, length)
                for waiter in self._chunk_waiters.pop(index, ()):
                    if not waiter.done():
                        waiter.set_result(None)
                if self.swarm.finished:
                    self._finished.set()
            case Rejected():
                self.metrics.hash_failures.inc()
                self.metrics.retries.labels("hash_mismatch").inc()
            case Returned(count=count, reason=reason):
                self.metrics.retries.labels(reason).inc(count)

    def flush(self) -> None:
        for worker in self._workers.values():
            worker.flush()
        # Announcements still waiting for a frame to go with go out when due, frame or not.
        due = self.swarm.announcements_due() if self.swarm is not None else None
        if due is not None and (self._flush_timer is None or due < self._flush_timer[0]):
            if self._flush_timer is not None:
                self._flush_timer[1].cancel()
            self._flush_timer = due, asyncio.get_running_loop().call_at(due, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        self.flush()

    def take_spare(self, peer: PeerKey) -> PeerConnection | None:
        """The connection that brought the manifest, if it is to this peer and still up."""
        conn = self._spare.pop(peer, None)
        if conn is not None and conn.error is not None:
            conn.close()
            return None
        return conn

    def close(self) -> None:
        """Close the connection kept from the manifest, if no worker took it."""
        if self._flush_timer is not None:
            self._flush_timer[1].cancel()
            self._flush_timer = None
        if self._spare_timer is not None:
            self._spare_timer.cancel()
            self._spare_timer = None
        for conn in self._spare.values():
            conn.close()
        self._spare.clear()

    async def _drain_writes(self) -> None:
        # Endgame duplicates may still be hashing; their pwrite must not outlive the fd.
        if self._writes:
            await asyncio.wait([asyncio.wrap_future(f) for f in list(self._writes)])

    # -- the supervisor loop ------------------------------------------------------------------

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        swarm, supervisor, part = self.swarm, self._supervisor, self._part
        assert swarm is not None and part is not None
        file_id = swarm.manifest.file_id
        tasks: dict[asyncio.Task, PeerKey] = {}
        supervisor.begin(loop.time())
        finished = asyncio.create_task(self._finished.wait())
        try:
            while not swarm.finished:
                now = loop.time()
                if supervisor.lookup_due(now, len(tasks)):
                    try:
                        # A short budget: the supervisor must not stall while the tracker is away.
                        self._meet(await self._lookup(file_id, budget=2.0))
                    except (TrackerUnavailable, TrackerRejected) as exc:
                        log.warning("peer list not refreshed", error=str(exc))
                for peer in supervisor.candidates(tasks.values(), now):
                    worker = self._workers[peer] = PeerWorker(self, peer, supervisor.book.is_origin(peer), self.take_spare(peer))
                    tasks[asyncio.create_task(worker.run())] = peer
                self.close()  # its peer was not picked: not kept open for nothing
                if len(tasks) != self.peer_count:
                    self.metrics.peers_active.inc(len(tasks) - self.peer_count)
                    self.peer_count = len(tasks)
                    for watcher in self.watchers:
                        watcher.peers(self, len(tasks))
                stall = supervisor.stalled(now, len(tasks), swarm.plan)
                if stall is not None:
                    raise DownloadError(
                        f"no progress on {swarm.manifest.name} for {self.settings.wait:g}s: {stall}; "
                        f"{swarm.plan.done_count} of {swarm.plan.num_chunks} chunks verified and kept in {part.path}"
                    )
                timeout = 0.5 if tasks else 0.25
                done, _ = await asyncio.wait([*tasks, finished], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not finished:
                        self._worker_ended(tasks.pop(task), task)
        finally:
            self.close()
            finished.cancel()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            # Read each end: a worker cancelled as an answer came may end with its peer's error
            # instead (3.11's wait_for), which asyncio would log as never retrieved.
            for task in tasks:
                task.cancelled() or task.exception()
            for peer in list(self._workers):
                swarm.close(peer, loop.time())
            self._workers.clear()
            self.metrics.peers_active.dec(self.peer_count)
            self.peer_count = 0

    def _worker_ended(self, peer: PeerKey, task: asyncio.Task) -> None:
        swarm, supervisor = self.swarm, self._supervisor
        assert swarm is not None
        now = asyncio.get_running_loop().time()
        worker = self._workers.pop(peer)
        returned = swarm.close(peer, now)
        self.flush()
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, DownloadError):
            raise exc
        if not isinstance(exc, (PeerError, RemoteProtocolError, OSError)):
            raise exc  # a bug: let it show
        ending = supervisor.ended(peer, exc, worker.label, now)
        if ending.dropped:
            self.metrics.peers_dropped.labels(ending.dropped).inc()
            log.warning("peer dropped", peer=worker.label, reason=str(exc))
        else:
            log.info("peer failed", peer=worker.label, reason=str(exc), failures=ending.failures)
        if returned:
            self.metrics.retries.labels(ending.reason).inc(returned)
