"""One download: find seeders, fetch and check the manifest, pull chunks from all seeders.

Each connected seeder gets a worker that keeps `depth` requests in flight, taking chunk
indices from the shared ChunkPlan. Received chunks are hashed and written (pwrite) on a
thread pool, off the event loop; the chunk's buffer returns to its connection's pool after.
The supervisor loop starts workers for the seeders the tracker lists, backs off from peers
that fail, bans peers that send bad data, and gives up only when no seeder has been usable
for `wait` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from p2p_shared import messages, wire
from p2p_shared.errors import (
    DownloadError,
    ManifestError,
    PeerClosed,
    PeerConnectError,
    PeerError,
    PeerRejected,
    PeerTimeout,
    RemoteProtocolError,
    TrackerRejected,
    TrackerUnavailable,
    TrackerUnreachable,
)
from p2p_shared.manifest import Manifest, is_file_id
from p2p_shared.net.tracker_client import TrackerClient
from p2p_shared.plan import ChunkPlan
from p2p_shared.ratelimit import TokenBucket

from .metrics import LeecherMetrics
from .output import PartFile, verified_chunks
from .peer import PeerConnection, open_peer
from .progress import Progress

log = structlog.get_logger()
PeerKey = tuple[str, int]


@dataclass
class DownloadOptions:
    output_dir: Path
    min_seeders: int = 1
    wait: float = 30.0
    wait_for_file: bool = False  # keep looking up a file the tracker does not know, for `wait` s
    max_peers: int = 8
    depth: int = 4
    chunk_timeout: float = 30.0
    connect_timeout: float = 5.0
    max_bad_chunks: int = 3
    refresh_interval: float = 5.0
    progress_bar: bool = False
    max_download_rate: float = 0.0  # bytes/s over all seeders; 0: unlimited
    secret: bytes | None = None  # the swarm secret, proven to every seeder
    tls: ssl.SSLContext | None = None  # TLS to seeders, when set


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    seconds: float
    fetched_bytes: int


class PeerBanned(PeerError):
    """This peer sent bad data or does not have the file: not used again for this download."""


@dataclass
class _PeerState:
    failures: int = 0
    retry_at: float = 0.0
    banned: bool = False


@dataclass(slots=True)
class _Verified:
    index: int
    buffer: bytearray
    outcome: Future


class _Wake:
    """Queued to idle workers when the plan changed (chunks returned, or download finished)."""


_WAKE = _Wake()


def _retry_reason(exc: BaseException) -> str:
    if isinstance(exc, PeerTimeout):
        return "timeout"
    if isinstance(exc, (PeerClosed, PeerConnectError, OSError)):
        return "connection"
    if isinstance(exc, PeerBanned):
        return "bad_peer"
    if isinstance(exc, PeerRejected):
        return "peer_error"
    return "protocol"


class Download:
    def __init__(self, tracker: TrackerClient, options: DownloadOptions, metrics: LeecherMetrics) -> None:
        self.tracker = tracker
        self.options = options
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="verify")
        self._writes: set[Future] = set()
        self._queues: dict[PeerKey, asyncio.Queue] = {}
        self._peer_state: dict[PeerKey, _PeerState] = {}
        self.fetched_bytes = 0
        self._limit: TokenBucket | None = None

    # -- finding the file -------------------------------------------------------------------

    async def _lookup(self, target: str, budget: float | None = None) -> messages.Peers:
        key = {"file_id": target} if is_file_id(target) else {"name": target}
        reply = await self.tracker.request(messages.Lookup(**key), budget)
        if isinstance(reply, messages.ErrorReply):
            raise TrackerRejected(reply.code, reply.message)
        if not isinstance(reply, messages.Peers):
            raise TrackerRejected("malformed", f"unexpected {reply.type} answer to a lookup")
        return reply

    async def find_seeders(self, target: str) -> tuple[messages.FileEntry, list[PeerKey]]:
        """Wait (at most `wait` seconds) until `min_seeders` live seeders hold the file.

        A file the tracker does not know is reported after one lookup, unless asked to wait
        for it; a tracker that cannot be reached at all (no such host, closed port) at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.wait
        delay, found, said = 0.25, 0, False
        while True:
            try:
                reply = await self._lookup(target)
                found = len(reply.peers)
                if reply.file is not None and found >= self.options.min_seeders:
                    return reply.file, list(reply.peers)
                if reply.file is None and not self.options.wait_for_file:
                    raise DownloadError(
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
                    raise DownloadError(f"no seeder holds {target} (waited {self.options.wait:g}s)")
                raise DownloadError(
                    f"only {found} of {self.options.min_seeders} seeders hold {target} (waited {self.options.wait:g}s)"
                )
            if not said:
                log.info("waiting for seeders", target=target, found=found, wanted=self.options.min_seeders)
                said = True
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 2.0)

    async def fetch_manifest(self, file_id: str, peers: list[PeerKey]) -> Manifest:
        """The manifest from the first seeder whose copy hashes to the file id."""
        last = "no seeder to ask"
        for host, port in peers:
            try:
                conn = await open_peer(
                    host, port, chunk_size=1, depth=0, timeout=self.options.connect_timeout,
                    secret=self.options.secret, tls=self.options.tls,
                )
                try:
                    conn.send(wire.GetManifest(bytes.fromhex(file_id)))
                    data = await conn.expect(wire.ManifestData, self.options.chunk_timeout)
                    return Manifest.decode_verified(data.data, file_id)
                finally:
                    conn.close()
            except (PeerError, RemoteProtocolError) as exc:
                last = str(exc)
                if isinstance(exc, ManifestError):
                    self.metrics.bad_manifests.inc()
                log.warning("manifest refused", peer=f"{host}:{port}", error=last)
        raise DownloadError(f"no seeder sent a valid manifest for {file_id[:16]}: {last}")

    # -- the download -----------------------------------------------------------------------

    async def run(self, target: str) -> DownloadResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self.options.max_download_rate:
            self._limit = TokenBucket(self.options.max_download_rate, started)
        entry, peers = await self.find_seeders(target)
        manifest = await self.fetch_manifest(entry.file_id, peers)
        log.info(
            "downloading",
            file=manifest.name,
            size=manifest.size,
            chunks=manifest.num_chunks,
            file_id=entry.file_id,
            seeders=len(peers),
        )
        out = self.options.output_dir
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create output folder {out}: {exc.strerror}") from None
        final = out / manifest.name
        if final.exists():
            same_size = final.stat().st_size == manifest.size  # (an empty manifest has no chunk to compare)
            if same_size and len(await asyncio.to_thread(verified_chunks, final, manifest)) == manifest.num_chunks:
                log.info("already downloaded; verified the existing copy", path=str(final))
                return DownloadResult(final, manifest.size, loop.time() - started, 0)
            raise DownloadError(f"{final} already exists and differs from {manifest.name}; move it or pick another -o")
        resume = final.with_name(final.name + ".part")
        done = await asyncio.to_thread(verified_chunks, resume, manifest) if resume.exists() else set()
        if done:
            log.info("resuming", path=str(resume), verified_chunks=len(done), of=manifest.num_chunks)
        part = PartFile(final, manifest.size)
        # Under a download cap, endgame copies would spend the user's bandwidth on duplicates.
        plan = ChunkPlan(manifest.num_chunks, done=done, endgame_copies=1 if self._limit else 2)
        done_bytes = sum(manifest.chunk_span(i)[1] for i in done)
        progress = Progress(manifest.name, manifest.size, done_bytes, self.options.progress_bar)
        try:
            await self._swarm(entry.file_id, manifest, plan, part, progress, peers)
            await self._drain_writes()
            part.finish()
        finally:
            progress.close()
            await self._drain_writes()
            part.close()
            self._pool.shutdown(wait=False)
        return DownloadResult(final, manifest.size, loop.time() - started, self.fetched_bytes)

    async def _drain_writes(self) -> None:
        # Endgame duplicates may still be hashing; their pwrite must not outlive the fd.
        if self._writes:
            await asyncio.wait([asyncio.wrap_future(f) for f in list(self._writes)])

    def _wake_all(self) -> None:
        for queue in self._queues.values():
            queue.put_nowait(_WAKE)

    async def _swarm(
        self, file_id: str, manifest: Manifest, plan: ChunkPlan, part: PartFile, progress: Progress, peers: list[PeerKey]
    ) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        known = list(peers)
        workers: dict[asyncio.Task, PeerKey] = {}
        last_lookup = loop.time()
        idle_since: float | None = None
        try:
            while not plan.finished:
                now = loop.time()
                if now - last_lookup >= (opts.refresh_interval if workers else 1.0):
                    last_lookup = now
                    try:
                        # A short budget: the supervisor must not stall while the tracker is away.
                        found = await self._lookup(file_id, budget=2.0)
                        known = list(found.peers) or known
                    except (TrackerUnavailable, TrackerRejected) as exc:
                        log.warning("peer list not refreshed", error=str(exc))
                active = set(workers.values())
                candidates = [p for p in known if p not in active]
                random.shuffle(candidates)
                for peer in candidates:
                    state = self._peer_state.setdefault(peer, _PeerState())
                    if len(workers) >= opts.max_peers or state.banned or state.retry_at > now:
                        continue
                    task = asyncio.create_task(self._worker(peer, file_id, manifest, plan, part, progress))
                    workers[task] = peer
                progress.set_peers(len(workers))
                self.metrics.peers_active.set(len(workers))
                if workers:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since > opts.wait:
                    raise DownloadError(
                        f"no seeder of {manifest.name} reachable for {opts.wait:g}s; "
                        f"{plan.done_count} of {plan.num_chunks} chunks verified and kept in {part.path}"
                    )
                if not workers:
                    await asyncio.sleep(0.25)
                    continue
                finished, _ = await asyncio.wait(workers, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    self._worker_ended(workers.pop(task), task, plan, loop.time())
        finally:
            for task in workers:
                task.cancel()
            if workers:
                await asyncio.wait(workers)
            self.metrics.peers_active.set(0)

    def _worker_ended(self, peer: PeerKey, task: asyncio.Task, plan: ChunkPlan, now: float) -> None:
        returned = plan.remove_peer(peer)
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, DownloadError):
            raise exc
        if not isinstance(exc, (PeerError, RemoteProtocolError, OSError)):
            raise exc  # a bug: let it show
        reason = _retry_reason(exc)
        state = self._peer_state[peer]
        if isinstance(exc, PeerBanned):
            state.banned = True
            self.metrics.peers_dropped.labels("bad_data").inc()
            log.warning("seeder dropped", peer=f"{peer[0]}:{peer[1]}", reason=str(exc))
        else:
            state.failures += 1
            state.retry_at = now + min(0.25 * 2**state.failures, 5.0)
            log.info("seeder failed", peer=f"{peer[0]}:{peer[1]}", reason=str(exc), failures=state.failures)
        if returned:
            self.metrics.retries.labels(reason).inc(len(returned))
            self._wake_all()

    async def _worker(
        self, peer: PeerKey, file_id: str, manifest: Manifest, plan: ChunkPlan, part: PartFile, progress: Progress
    ) -> None:
        opts = self.options
        try:
            conn = await open_peer(
                *peer, chunk_size=manifest.chunk_size, depth=opts.depth, timeout=opts.connect_timeout,
                secret=opts.secret, tls=opts.tls,
            )
        except PeerRejected as exc:  # not in our swarm, or not speaking our protocol
            raise PeerBanned(str(exc)) from None
        self._queues[peer] = conn.events
        try:
            raw_id = bytes.fromhex(file_id)
            conn.send(wire.GetHave(raw_id))
            try:
                have = await conn.expect(wire.Have, opts.chunk_timeout)
            except PeerRejected as exc:
                raise PeerBanned(f"{conn.label} does not serve this file ({exc})") from None
            if have.num_chunks != manifest.num_chunks:
                raise PeerBanned(f"{conn.label} announced {have.num_chunks} chunks, the manifest has {manifest.num_chunks}")
            indices = have.indices()
            plan.add_peer(peer, None if len(indices) == manifest.num_chunks else indices)
            await self._pump(peer, conn, raw_id, manifest, plan, part, progress)
        finally:
            self._queues.pop(peer, None)
            conn.close()

    async def _pump(
        self,
        peer: PeerKey,
        conn: PeerConnection,
        raw_id: bytes,
        manifest: Manifest,
        plan: ChunkPlan,
        part: PartFile,
        progress: Progress,
    ) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        outstanding: set[int] = set()
        verifying = 0
        bad = 0
        while not plan.finished:
            while len(outstanding) + verifying < opts.depth:
                index = plan.next_chunk(peer)
                if index is None:
                    break
                if self._limit is not None:  # pace requests: the bytes follow them
                    await asyncio.sleep(self._limit.reserve(manifest.chunk_span(index)[1], loop.time()))
                conn.send(wire.Request(raw_id, index))
                outstanding.add(index)
            if outstanding:
                event = await conn.next_event(opts.chunk_timeout)
            else:
                try:
                    event = await asyncio.wait_for(conn.events.get(), 1.0)
                except TimeoutError:
                    continue
                if isinstance(event, Exception):
                    raise event
            match event:
                case wire.Chunk(file_id=fid, index=index, data=data, buffer=buffer):
                    if fid != raw_id or index not in outstanding:
                        raise RemoteProtocolError(f"{conn.label} sent chunk {index}, which we did not ask for")
                    outstanding.discard(index)
                    if plan.is_done(index):  # endgame: another seeder was faster
                        conn.release(buffer)
                        plan.complete(index, peer)
                        continue
                    verifying += 1
                    outcome = self._pool.submit(self._verify_and_write, manifest, part, index, data)
                    self._writes.add(outcome)
                    outcome.add_done_callback(self._writes.discard)
                    outcome.add_done_callback(
                        lambda f, i=index, b=buffer: loop.call_soon_threadsafe(conn.events.put_nowait, _Verified(i, b, f))
                    )
                case _Verified(index=index, buffer=buffer, outcome=outcome):
                    verifying -= 1
                    conn.release(buffer)
                    if outcome.result():  # raises DownloadError if the write failed
                        length = manifest.chunk_span(index)[1]
                        if plan.complete(index, peer):
                            self.fetched_bytes += length
                            self.metrics.chunks.inc()
                            self.metrics.bytes.inc(length)
                            self._peer_state[peer].failures = 0
                            progress.advance(length)
                            if plan.finished:
                                self._wake_all()
                    else:
                        bad += 1
                        self.metrics.hash_failures.inc()
                        self.metrics.retries.labels("hash_mismatch").inc()
                        log.warning("chunk failed verification", peer=conn.label, chunk=index)
                        plan.fail(index, peer)
                        self._wake_all()
                        if bad >= opts.max_bad_chunks:
                            raise PeerBanned(f"{conn.label} sent {bad} chunks that failed verification")
                case wire.Error(code=code, message=message, index=index):
                    if index in outstanding:
                        outstanding.discard(index)
                        plan.fail(index, peer)
                        self.metrics.retries.labels("peer_error").inc()
                        self._wake_all()
                    if code == wire.ErrorCode.UNKNOWN_FILE:
                        raise PeerBanned(f"{conn.label} does not serve this file")
                    bad += 1
                    log.warning("seeder refused a chunk", peer=conn.label, chunk=index, code=code.name, error=message)
                    if bad >= opts.max_bad_chunks:
                        raise PeerBanned(f"{conn.label} refused {bad} requests")
                case _Wake():
                    pass
                case _:
                    raise RemoteProtocolError(f"{conn.label} sent an unexpected {type(event).__name__}")

    @staticmethod
    def _verify_and_write(manifest: Manifest, part: PartFile, index: int, data: memoryview) -> bool:
        """Runs on the thread pool: SHA-256 and pwrite both release the GIL."""
        offset, length = manifest.chunk_span(index)
        if len(data) != length or hashlib.sha256(data).digest() != manifest.chunk_digest(index):
            return False
        part.write(offset, data)
        return True
