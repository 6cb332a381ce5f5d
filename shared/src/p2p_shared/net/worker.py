"""One peer of a download, over one connection: the I/O around its `PeerSession`.

The worker connects, hands every frame that arrives to the download's `Swarm` and carries out
what it answers: a payload the connection's receiving thread hashed and wrote comes with its
verdict, which the swarm hears at once; one it left unchecked goes to the verify pool (SHA-256
and pwrite, off the loop) and its verdict comes back on this connection's event queue. Either
way the buffer then returns to the connection's pool. Between events it sleeps until the
session's next deadline (a paced request, a silent peer). The worker knows the download only
through `SwarmHost`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from ..errors import PeerBanned, PeerError, PeerRejected
from ..settings import DownloadSettings
from ..swarm import Checked, Effect, End, Release, Swarm, Verify
from .peer_client import PeerConnection, Received, open_peer

Peer = Hashable


class SwarmHost(Protocol):
    """What a worker needs of its download."""

    swarm: Swarm
    settings: DownloadSettings
    shares: bool  # we serve what we download: peers may count on us to pass chunks on
    tls: ssl.SSLContext | None

    def verify(self, index: int, data: memoryview) -> Future[bool]:
        """Hash chunk `index` and write it if it matches (on the verify pool)."""

    def precheck(self, index: int, data: memoryview) -> bool | Exception | None:
        """The same, in a connection's receiving thread; None if not checked there."""

    def record(self, peer: Peer, effect: Effect) -> None:
        """A download-wide effect: a chunk delivered or rejected, chunks returned."""

    def flush(self) -> None:
        """Send every session's queued frames."""


@dataclass(slots=True)
class _Outcome:
    index: int
    buffer: object
    result: Callable[[], bool]  # the verdict; raises DownloadError if the write failed


class PeerWorker:
    def __init__(self, host: SwarmHost, peer: tuple[str, int], origin: bool, conn: PeerConnection | None = None) -> None:
        self.host = host
        self.peer = peer
        self.origin = origin
        self._opened = conn  # a connection to this peer already open and greeted (the manifest's)
        self.label = f"{peer[0]}:{peer[1]}"
        self.conn: PeerConnection | None = None

    def flush(self) -> None:
        """Send what the session has due; a connection that failed ends its worker on its own."""
        conn, swarm = self.conn, self.host.swarm
        if conn is None or self.peer not in swarm.sessions:
            return
        frames = swarm.take_due(self.peer, asyncio.get_running_loop().time())
        try:
            if frames:
                conn.send_all(frames)
        except PeerError:
            pass

    async def run(self) -> None:
        host, settings, swarm = self.host, self.host.settings, self.host.swarm
        conn, self._opened = self._opened, None
        if conn is not None:
            conn.take_chunks(swarm.manifest.chunk_size, settings.pipeline_depth)
        else:
            try:
                conn = await open_peer(
                    *self.peer, chunk_size=swarm.manifest.chunk_size, depth=settings.pipeline_depth,
                    timeout=settings.connect_timeout, secret=settings.secret_bytes(), tls=host.tls, shares=host.shares,
                )
            except PeerRejected as exc:  # not in our swarm, or not speaking our protocol
                raise PeerBanned(str(exc)) from None
        loop = asyncio.get_running_loop()
        self.conn = conn
        conn.check = host.precheck
        try:
            swarm.open(self.peer, conn.label, self.origin, conn.announces, loop.time())
            host.flush()
            while not swarm.finished:
                wake = [t for t in (swarm.deadline(self.peer), swarm.ready_at(self.peer)) if t is not None]
                timeout = max(0.0, min(wake) - loop.time()) if wake else None
                try:
                    # Waiting costs a task: only when nothing is queued.
                    event = conn.events.get_nowait() if conn.events.qsize() else await asyncio.wait_for(conn.events.get(), timeout)
                except TimeoutError:
                    effects = swarm.tick(self.peer, loop.time())
                else:
                    if isinstance(event, Exception):
                        raise event
                    if isinstance(event, _Outcome):  # raises DownloadError if the write failed
                        event = Checked(event.index, event.result(), event.buffer)
                    effects = swarm.receive(self.peer, event, loop.time())
                self._carry_out(conn, effects, loop)
                if not conn.events.qsize():  # (frames of events that came together go out together)
                    host.flush()
        finally:
            self.conn = None
            conn.close()

    def _carry_out(self, conn: PeerConnection, effects: list[Effect], loop: asyncio.AbstractEventLoop) -> None:
        for effect in effects:
            match effect:
                case Verify(index=index, data=data, buffer=buffer):
                    if isinstance(buffer, Received) and buffer.verdict is not None:  # checked as it arrived: the verdict now
                        checked = Checked(index, buffer.result(), buffer)  # (raises DownloadError if the write failed)
                        self._carry_out(conn, self.host.swarm.receive(self.peer, checked, loop.time()), loop)
                        continue
                    future = self.host.verify(index, data)
                    future.add_done_callback(
                        lambda f, i=index, b=buffer: loop.call_soon_threadsafe(conn.events.put_nowait, _Outcome(i, b, f.result))
                    )
                case Release(buffer=buffer):
                    conn.release(buffer)  # type: ignore[arg-type]
                case End(error=error):
                    raise error
                case _:
                    self.host.record(self.peer, effect)
