"""One peer of a download: connect, learn what it holds, keep requests in flight.

The worker tells the peer what we hold (so an origin offers us something else), asks for its
have-set, then keeps its request window full with chunks the plan picks for this peer. Chunks
are hashed and written on the download's thread pool; the result comes back on this
connection's event queue, and the chunk's buffer returns to the connection's pool after.
Announcements of the peer's new chunks arrive on the same queue and give the worker more to ask.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from p2p_shared import wire
from p2p_shared.errors import PeerError, PeerRejected, RemoteProtocolError
from p2p_shared.manifest import Manifest
from p2p_shared.peers import RequestWindow
from p2p_shared.plan import ChunkPlan

from .output import PartFile
from .peer import PeerConnection, open_peer

if TYPE_CHECKING:
    from .download import Download

log = structlog.get_logger()
PeerKey = tuple[str, int]
IDLE_POLL = 1.0  # seconds an idle worker waits before asking the plan again


class PeerBanned(PeerError):
    """This peer sent bad data, broke the protocol, or does not have the file: not used again
    for this download."""


@dataclass(slots=True)
class Verified:
    index: int
    buffer: bytearray
    outcome: Future


class Wake:
    """Queued to idle workers when the plan changed (chunks returned, endgame, finished)."""


WAKE = Wake()


def verify_and_write(manifest: Manifest, part: PartFile, index: int, data: memoryview) -> bool:
    """Runs on the thread pool: SHA-256 and pwrite both release the GIL."""
    offset, length = manifest.chunk_span(index)
    if len(data) != length or hashlib.sha256(data).digest() != manifest.chunk_digest(index):
        return False
    part.write(offset, data)
    return True


class PeerWorker:
    def __init__(self, download: Download, peer: PeerKey, origin: bool, plan: ChunkPlan, part: PartFile) -> None:
        self.download = download
        self.peer = peer
        self.origin = origin
        self.plan = plan
        self.part = part
        self.conn: PeerConnection | None = None
        self.pumping = False  # wake-ups go only to a worker that reads its queue for them

    def announce(self, raw_id: bytes, index: int) -> None:
        """We verified a chunk: tell this peer, if it listens and if we share. A leecher that
        does not share keeps quiet: an origin would count on it to pass its chunks on."""
        conn = self.conn
        if self.download.sharing is not None and conn is not None and conn.announces and conn.error is None:
            conn.send(wire.Announce(raw_id, (index,)))

    def decline(self, raw_id: bytes, indices: tuple[int, ...]) -> None:
        """We get these chunks anyway: if this is an origin that offered them, free its offers."""
        conn = self.conn
        if indices and self.origin and conn is not None and conn.announces and conn.error is None:
            conn.send(wire.Decline(raw_id, indices))

    def wake(self) -> None:
        if self.conn is not None and self.pumping:
            self.conn.events.put_nowait(WAKE)

    async def run(self, manifest: Manifest, pool: ThreadPoolExecutor) -> None:
        opts = self.download.options
        try:
            conn = await open_peer(
                *self.peer, chunk_size=manifest.chunk_size, depth=opts.depth, timeout=opts.connect_timeout,
                secret=opts.secret, tls=opts.tls, shares=self.download.sharing is not None,
            )
        except PeerRejected as exc:  # not in our swarm, or not speaking our protocol
            raise PeerBanned(str(exc)) from None
        self.conn = conn
        try:
            raw_id = bytes.fromhex(manifest.file_id)
            if conn.announces and self.download.sharing is not None:  # so that an origin offers us other chunks
                conn.send(wire.Have.of(raw_id, manifest.num_chunks, self.download.verified))
            conn.send(wire.GetHave(raw_id))
            try:
                have = await conn.expect(wire.Have, opts.chunk_timeout)
            except PeerRejected as exc:
                raise PeerBanned(f"{conn.label} does not serve this file ({exc})") from None
            if have.num_chunks != manifest.num_chunks:
                raise PeerBanned(f"{conn.label} announced {have.num_chunks} chunks, the manifest has {manifest.num_chunks}")
            indices = have.indices()
            self.plan.add_peer(self.peer, None if len(indices) == manifest.num_chunks else indices, origin=self.origin)
            self.pumping = True
            await self._pump(conn, raw_id, manifest, pool)
        finally:
            self.conn = None
            conn.close()

    async def _pump(self, conn: PeerConnection, raw_id: bytes, manifest: Manifest, pool: ThreadPoolExecutor) -> None:
        download, plan, opts = self.download, self.plan, self.download.options
        loop = asyncio.get_running_loop()
        window = RequestWindow(opts.depth, opts.max_bad_chunks)
        while not plan.finished:
            while window.room > 0:
                index = plan.next_chunk(self.peer)
                if index is None:
                    break
                download.chunk_assigned(index, self.peer)
                if download.limit is not None:  # pace requests: the bytes follow them
                    await asyncio.sleep(download.limit.reserve(manifest.chunk_span(index)[1], loop.time()))
                conn.send(wire.Request(raw_id, index))
                window.asked(index)
            if window.outstanding:
                event = await conn.next_event(opts.chunk_timeout)
            else:
                try:
                    event = await asyncio.wait_for(conn.events.get(), IDLE_POLL)
                except TimeoutError:
                    continue
                if isinstance(event, Exception):
                    raise event
            match event:
                case wire.Chunk(file_id=fid, index=index, data=data, buffer=buffer):
                    if fid != raw_id or not window.arrived(index):
                        raise PeerBanned(f"{conn.label} sent chunk {index}, which we did not ask for")
                    if plan.is_done(index):  # endgame: another peer was faster
                        conn.release(buffer)
                        plan.complete(index, self.peer)
                        continue
                    window.verifying += 1
                    outcome = pool.submit(verify_and_write, manifest, self.part, index, data)
                    download.track_write(outcome)
                    outcome.add_done_callback(
                        lambda f, i=index, b=buffer: loop.call_soon_threadsafe(conn.events.put_nowait, Verified(i, b, f))
                    )
                case Verified(index=index, buffer=buffer, outcome=outcome):
                    window.verifying -= 1
                    conn.release(buffer)
                    if outcome.result():  # raises DownloadError if the write failed
                        download.chunk_verified(index, self.peer, self.origin)
                    else:
                        download.chunk_failed(index, self.peer, conn.label)
                        if window.strike():
                            raise PeerBanned(f"{conn.label} sent {window.bad} chunks that failed verification")
                case wire.Announce(file_id=fid, indices=indices):
                    if fid != raw_id:
                        raise PeerBanned(f"{conn.label} announced chunks of another file")
                    if max(indices) >= manifest.num_chunks:
                        raise PeerBanned(f"{conn.label} announced chunk {max(indices)} of a {manifest.num_chunks}-chunk file")
                    plan.peer_has(self.peer, indices)
                    if self.origin:  # offers of chunks we are getting anyway
                        self.decline(raw_id, tuple(i for i in indices if plan.taken_elsewhere(i, self.peer)))
                case wire.Error(code=code, message=message, index=index):
                    if window.refused(index):
                        plan.fail(index, self.peer)
                        download.metrics.retries.labels("peer_error").inc()
                        download.wake_all()
                    if code == wire.ErrorCode.UNKNOWN_FILE:
                        raise PeerBanned(f"{conn.label} does not serve this file")
                    log.warning("peer refused a chunk", peer=conn.label, chunk=index, code=code.name, error=message)
                    if window.strike():
                        raise PeerBanned(f"{conn.label} refused {window.bad} requests")
                case Wake():
                    pass
                case _:
                    raise RemoteProtocolError(f"{conn.label} sent an unexpected {type(event).__name__}")
