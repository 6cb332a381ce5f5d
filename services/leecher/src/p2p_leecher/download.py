"""One download: find holders, fetch and check the manifest, pull chunks from all of them.

Each connected holder gets a worker (worker.py) that keeps requests in flight, taking chunk
indices from one shared ChunkPlan. The supervisor here starts workers for the holders the
tracker lists (complete holders, the origin, and partial ones, other leechers), looks the file
up again every few seconds to meet new holders, backs off from peers that fail, bans peers
that send bad data or break the protocol, and gives up once no chunk has been verified for
`wait` seconds, whatever the peers do (refuse, trickle, hold nothing we need), saying why.
While it downloads, the leecher shares (sharing.py): every verified chunk is announced to the
peers fetching from us and to the peers we fetch from.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from p2p_shared import messages, wire
from p2p_shared.errors import (
    DownloadError,
    ManifestError,
    PeerClosed,
    PeerConnectError,
    PeerError,
    PeerTimeout,
    RemoteProtocolError,
    TrackerRejected,
    TrackerUnavailable,
    TrackerUnreachable,
)
from p2p_shared.manifest import Manifest, is_file_id
from p2p_shared.net.tracker_client import TrackerClient
from p2p_shared.peers import PeerBook
from p2p_shared.plan import ChunkPlan
from p2p_shared.ratelimit import TokenBucket

from .metrics import LeecherMetrics
from .output import FinalExists, PartFile, verified_chunks
from .peer import open_peer
from .progress import Progress
from .worker import PeerBanned, PeerWorker

if TYPE_CHECKING:
    from .sharing import Sharing

log = structlog.get_logger()
PeerKey = tuple[str, int]
FIRST_REFRESH = 0.25  # seconds to the first lookup after the start; doubling up to refresh_interval


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
    max_download_rate: float = 0.0  # bytes/s over all peers; 0: unlimited
    secret: bytes | None = None  # the swarm secret, proven to every peer
    tls: ssl.SSLContext | None = None  # TLS to peers, when set


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    seconds: float
    fetched_bytes: int
    from_seeders: int = 0  # of the fetched bytes, those a complete holder sent


@dataclass(frozen=True)
class Holders:
    file: messages.FileEntry
    complete: list[PeerKey]
    partial: list[PeerKey]


def _retry_reason(exc: BaseException) -> str:
    if isinstance(exc, PeerTimeout):
        return "timeout"
    if isinstance(exc, (PeerClosed, PeerConnectError, OSError)):
        return "connection"
    if isinstance(exc, PeerBanned):
        return "bad_peer"
    if isinstance(exc, PeerError):
        return "peer_error"
    return "protocol"


class Download:
    def __init__(
        self, tracker: TrackerClient, options: DownloadOptions, metrics: LeecherMetrics, sharing: Sharing | None = None
    ) -> None:
        self.tracker = tracker
        self.options = options
        self.metrics = metrics
        self.sharing = sharing
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="verify")
        self.book = PeerBook()
        self.verified: set[int] = set()
        self.fetched_bytes = 0
        self.from_seeders = 0
        self.limit: TokenBucket | None = None
        self._writes: set[Future] = set()
        self._workers: dict[PeerKey, PeerWorker] = {}
        self._plan: ChunkPlan | None = None
        self._manifest: Manifest | None = None
        self._progress: Progress | None = None
        self._raw_id = b""
        self._endgame_woken = False
        self._progress_at = 0.0  # loop time of the swarm's start or its last verified chunk
        self._last_failure = ""  # why the last peer connection ended

    # -- finding the file -------------------------------------------------------------------

    async def _lookup(self, target: str, budget: float | None = None) -> messages.Peers:
        key = {"file_id": target} if is_file_id(target) else {"name": target}
        me = {"port": self.sharing.port, "host": self.sharing.settings.advertise_host} if self.sharing else {}
        reply = await self.tracker.request(messages.Lookup(**key, **me), budget)
        if isinstance(reply, messages.ErrorReply):
            raise TrackerRejected(reply.code, reply.message)
        if not isinstance(reply, messages.Peers):
            raise TrackerRejected("malformed", f"unexpected {reply.type} answer to a lookup")
        return reply

    def _meet(self, reply: messages.Peers) -> tuple[list[PeerKey], list[PeerKey]]:
        complete = [tuple(p) for p in reply.peers]
        partial = [tuple(p) for p in reply.partial or ()]
        for peer in complete:
            self.book.meet(peer, origin=True)
        for peer in partial:
            self.book.meet(peer)
        return complete, partial

    async def find_holders(self, target: str) -> Holders:
        """Wait (at most `wait` seconds) until `min_seeders` live holders have the file.

        A file the tracker does not know is reported after one lookup, unless asked to wait
        for it; a tracker that cannot be reached at all (no such host, closed port) at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.wait
        delay, found, said = 0.25, 0, False
        while True:
            try:
                reply = await self._lookup(target)
                complete, partial = self._meet(reply)
                found = len(complete) + len(partial)
                if reply.file is not None and found >= self.options.min_seeders:
                    return Holders(reply.file, complete, partial)
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
        """The manifest from the first holder whose copy hashes to the file id."""
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
            self.limit = TokenBucket(self.options.max_download_rate, started)
        holders = await self.find_holders(target)
        file_id = holders.file.file_id
        # Complete holders first: partial ones may be leechers that have nothing yet.
        manifest = await self.fetch_manifest(file_id, holders.complete + holders.partial)
        log.info(
            "downloading",
            file=manifest.name,
            size=manifest.size,
            chunks=manifest.num_chunks,
            file_id=file_id,
            seeders=len(holders.complete),
            peers=len(holders.partial),
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
                if self.sharing is not None:
                    await self.sharing.start(manifest, final, set(range(manifest.num_chunks)))
                return DownloadResult(final, manifest.size, loop.time() - started, 0)
            raise DownloadError(f"{final} already exists and differs from {manifest.name}; move it or pick another -o")
        part = PartFile(final, manifest.size)
        done = await asyncio.to_thread(part.verified_chunks, manifest) if part.resumed else set()
        part.reserve(keep=bool(done))
        if done:
            log.info("resuming", path=str(part.path), verified_chunks=len(done), of=manifest.num_chunks)
        self._manifest = manifest
        self.verified = set(done)
        self._raw_id = bytes.fromhex(file_id)
        # Under a download cap, endgame copies would spend the user's bandwidth on duplicates.
        plan = self._plan = ChunkPlan(manifest.num_chunks, done=done, endgame_copies=1 if self.limit else 2)
        done_bytes = sum(manifest.chunk_span(i)[1] for i in done)
        progress = self._progress = Progress(manifest.name, manifest.size, done_bytes, self.options.progress_bar)
        try:
            if self.sharing is not None:
                await self.sharing.start(manifest, part.path, self.verified)
            await self._swarm(file_id, manifest, plan, part, holders)
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
            progress.close()
            await self._drain_writes()
            part.close()
            self.pool.shutdown(wait=False)
        return DownloadResult(final, manifest.size, loop.time() - started, self.fetched_bytes, self.from_seeders)

    # -- what workers report ------------------------------------------------------------------

    def track_write(self, outcome: Future) -> None:
        self._writes.add(outcome)
        outcome.add_done_callback(self._writes.discard)

    def chunk_verified(self, index: int, peer: PeerKey, origin: bool) -> None:
        plan, progress = self._plan, self._progress
        assert plan is not None and progress is not None
        if not plan.complete(index, peer):
            return  # an endgame copy that lost the race
        assert self._manifest is not None
        length = self._manifest.chunk_span(index)[1]
        self.fetched_bytes += length
        self.from_seeders += length if origin else 0
        self.verified.add(index)
        self.metrics.chunks.inc()
        self.metrics.bytes.labels("seeder" if origin else "peer").inc(length)
        self.book.delivered(peer)
        self._progress_at = asyncio.get_running_loop().time()
        progress.advance(length)
        if self.sharing is not None:
            self.sharing.verified(index)
        for worker in self._workers.values():
            worker.announce(self._raw_id, index)
        if plan.finished:
            self.wake_all()

    def chunk_failed(self, index: int, peer: PeerKey, label: str) -> None:
        assert self._plan is not None
        self.metrics.hash_failures.inc()
        self.metrics.retries.labels("hash_mismatch").inc()
        log.warning("chunk failed verification", peer=label, chunk=index)
        self._plan.fail(index, peer)
        self.wake_all()

    def chunk_assigned(self, index: int, peer: PeerKey) -> None:
        """A chunk was asked of `peer`: the origins that offered it too may offer us others instead.
        Once none is left unassigned, idle workers may start endgame copies."""
        assert self._plan is not None
        for other, worker in self._workers.items():
            if other != peer and self._plan.holds(other, index):
                worker.decline(self._raw_id, (index,))
        if not self._endgame_woken and not self._plan.unassigned_count:
            self._endgame_woken = True
            self.wake_all()

    def wake_all(self) -> None:
        for worker in self._workers.values():
            worker.wake()

    async def _drain_writes(self) -> None:
        # Endgame duplicates may still be hashing; their pwrite must not outlive the fd.
        if self._writes:
            await asyncio.wait([asyncio.wrap_future(f) for f in list(self._writes)])

    # -- the supervisor -----------------------------------------------------------------------

    async def _swarm(self, file_id: str, manifest: Manifest, plan: ChunkPlan, part: PartFile, holders: Holders) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        tasks: dict[asyncio.Task, PeerKey] = {}
        last_lookup = loop.time()
        # Look up again soon, then less often: leechers that start together register moments
        # apart, and the first of them must meet the others before it has fetched everything.
        lookup_every = FIRST_REFRESH
        self._progress_at = loop.time()
        try:
            while not plan.finished:
                now = loop.time()
                if now - last_lookup >= (lookup_every if tasks else FIRST_REFRESH):
                    last_lookup = now
                    lookup_every = min(2 * lookup_every, opts.refresh_interval)
                    try:
                        # A short budget: the supervisor must not stall while the tracker is away.
                        self._meet(await self._lookup(file_id, budget=2.0))
                    except (TrackerUnavailable, TrackerRejected) as exc:
                        log.warning("peer list not refreshed", error=str(exc))
                active = set(tasks.values())
                for peer in self._candidates(active, now):
                    if len(tasks) >= opts.max_peers:
                        break
                    worker = PeerWorker(self, peer, self.book.is_origin(peer), plan, part)
                    self._workers[peer] = worker
                    tasks[asyncio.create_task(worker.run(manifest, self.pool))] = peer
                assert self._progress is not None
                self._progress.set_peers(len(tasks))
                self.metrics.peers_active.set(len(tasks))
                if now - self._progress_at > opts.wait:
                    raise DownloadError(
                        f"no progress on {manifest.name} for {opts.wait:g}s: {self._stall(plan, len(tasks))}; "
                        f"{plan.done_count} of {plan.num_chunks} chunks verified and kept in {part.path}"
                    )
                if not tasks:
                    await asyncio.sleep(0.25)
                    continue
                finished, _ = await asyncio.wait(tasks, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    self._worker_ended(tasks.pop(task), task, plan, loop.time())
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            self._workers.clear()
            self.metrics.peers_active.set(0)

    def _stall(self, plan: ChunkPlan, connected: int) -> str:
        """Why no chunk came, in a few words."""
        last = f" (last: {self._last_failure})" if self._last_failure else ""
        if not connected:
            return f"no holder reachable{last}"
        if not plan.missing_held():
            return f"the {connected} connected peers hold none of the {plan.num_chunks - plan.done_count} chunks missing"
        return f"{connected} peers connected, none delivered a valid chunk{last}"

    def _candidates(self, active: set[PeerKey], now: float) -> list[PeerKey]:
        """Peers to connect to now, origins first: every origin we are connected to hears which
        chunks we hold, so it offers us chunks no one has yet (p2p_shared.offers)."""
        usable = [p for p in self.book.known() if p not in active and self.book.usable(p, now)]
        random.shuffle(usable)
        return sorted(usable, key=lambda p: not self.book.is_origin(p))

    def _worker_ended(self, peer: PeerKey, task: asyncio.Task, plan: ChunkPlan, now: float) -> None:
        self._workers.pop(peer, None)
        returned = plan.remove_peer(peer)
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, DownloadError):
            raise exc
        if not isinstance(exc, (PeerError, RemoteProtocolError, OSError)):
            raise exc  # a bug: let it show
        reason, label = _retry_reason(exc), f"{peer[0]}:{peer[1]}"
        self._last_failure = f"{label}: {exc}"
        if isinstance(exc, (PeerBanned, RemoteProtocolError)):  # bad data or a broken protocol: not asked again
            self.book.ban(peer, str(exc))
            self.metrics.peers_dropped.labels("bad_data" if isinstance(exc, PeerBanned) else "protocol").inc()
            log.warning("peer dropped", peer=label, reason=str(exc))
        else:
            failures = self.book.failed(peer, now)
            log.info("peer failed", peer=label, reason=str(exc), failures=failures)
        if returned:
            self.metrics.retries.labels(reason).inc(len(returned))
            self.wake_all()
