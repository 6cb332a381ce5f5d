"""Hosts on virtual time: the I/O shells of net/peer_server.py, net/download.py and net/worker.py,
redone around the same sans-IO objects, with the clock and the flow network in place of sockets.

Every decision is the library's: a host serves through a `ServingCore` (the handshake, what to
answer each frame, an origin's super-seeding offers) and downloads through a `Swarm` (the chunk
plan, each peer's request window, endgame, announcements, declines) and a `Supervisor` (lookups,
whom to connect to, back-off, bans, stalls). This module only carries frames between them, with
the delays and link shares of network.py, as the asyncio shells carry them between sockets:

- A server reads one frame of a connection at a time and answers it before reading the next; a
  chunk's payload is a flow, and frames queued meanwhile (announcements, offers) go after it.
- A client hands each frame to its Swarm, carries out the effects (a payload is checked at once:
  its hash passes unless the sender lies), and sends what every session queued.
- The supervisor loop runs every 0.5 s (0.25 s with no peer), and at once when a worker ends.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from p2p_shared import wire
from p2p_shared.errors import PeerClosed, PeerConnectError, PeerError, RemoteProtocolError
from p2p_shared.manifest import Manifest
from p2p_shared.messages import FileEntry
from p2p_shared.offers import OfferBook
from p2p_shared.serving import PeerState, Refuse, Send, SendChunk, SendManifest, ServingCore
from p2p_shared.settings import DownloadSettings
from p2p_shared.supervisor import Supervisor
from p2p_shared.swarm import Checked, Delivered, End, Rejected, Release, Returned, Swarm, Verify

from .network import Endpoint

NO_BYTES = memoryview(b"")
PORT = 7000


@dataclass
class Knobs:
    """What a run may change of the library's settings (the defaults are the library's)."""

    settings: DownloadSettings  # max_peers, pipeline_depth, refresh_interval, chunk_timeout, wait, ...
    max_connections: int  # a server's (ServingSettings)
    super_seed: bool = True  # origins offer (the seeder's default; --no-super-seed)
    offer_window: int | None = None  # OfferBook's window (None: its default)
    random_first: int | None = None  # ChunkPlan's random first picks (None: its default)
    offer_every: float = 2.0  # PeerServer.keep_offering's period


class Source:
    """A file held here, as the serving core sees it (a ChunkSource): no bytes, only which chunks."""

    def __init__(self, manifest: Manifest, complete: bool) -> None:
        self.manifest = manifest
        self.raw_id = manifest.raw_id
        self.manifest_bytes = b""  # its size is not modelled
        self.chunks: set[int] | None = None if complete else set()

    @property
    def complete(self) -> bool:
        return self.chunks is None

    def add(self, index: int) -> None:
        if self.chunks is not None:
            self.chunks.add(index)
            if len(self.chunks) == self.manifest.num_chunks:
                self.chunks = None

    def has(self, index: int) -> bool:
        return self.chunks is None or index in self.chunks

    def held(self) -> list[int] | None:
        return None if self.chunks is None else sorted(self.chunks)


class Conn:
    """One connection, client to server: the server's side (its PeerState, the frames it has
    not read yet, the payload it sends) and the client's (its worker's label)."""

    __slots__ = ("serial", "client", "server", "state", "inbox", "pending", "busy", "flow", "closed", "open", "timer_at", "label", "on_open", "on_manifest")

    def __init__(self, client: SimHost, server: SimHost) -> None:
        self.serial = client.sim.next_serial()  # an order for connections that does not depend on memory addresses
        self.client, self.server = client, server
        self.state: PeerState | None = None
        self.inbox: deque = deque()
        self.pending: list[tuple[float, list]] = []  # (arrival time, frames) sent while the server was busy
        self.busy = False
        self.flow = None
        self.closed = False
        self.open = False  # the handshake is done
        self.timer_at: float | None = None
        self.label = server.label
        self.on_open = None
        self.on_manifest = None


class SimHost:
    def __init__(self, sim, index: int, endpoint: Endpoint, *, origin: bool, lies: bool = False) -> None:
        self.sim = sim
        self.index = index
        self.key = (f"h{index}", PORT)
        self.label = f"h{index}:{PORT}"
        self.endpoint = endpoint
        self.origin = origin
        self.lies = lies  # every chunk it sends fails verification
        self.alive = True
        self.core = ServingCore(None)
        self.served: dict[Conn, None] = {}  # connections to our server, in the order they came
        self.source: Source | None = None
        self.download: Download | None = None
        self.arrived_at = 0.0
        self.done_at: float | None = None
        self.left_at: float | None = None
        self.registered = False

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, source: Source, super_seed: bool) -> None:
        sim = self.sim
        self.source = source
        self.core.add(source, super_seed)  # type: ignore[arg-type]
        if super_seed:
            # The core makes its OfferBook with an unseeded Random; a seeded one of the same
            # class keeps runs reproducible (and takes the run's offer window, if one is set).
            kwargs = {} if sim.knobs.offer_window is None else {"window": sim.knobs.offer_window}
            self.core._offers[source.raw_id] = OfferBook(
                source.manifest.num_chunks, rng=random.Random(sim.rng.random()), order_key=source.raw_id, **kwargs
            )
            sim.clock.at(sim.clock.now + sim.knobs.offer_every, self._keep_offering)

    def _keep_offering(self) -> None:
        if not self.alive:
            return
        for state in self.core.top_up_offers(self.sim.clock.now):
            self._flush_queued(state.shell)
        self.sim.clock.at(self.sim.clock.now + self.sim.knobs.offer_every, self._keep_offering)

    def accept(self, conn: Conn) -> bool:
        if not self.alive or len(self.served) >= self.sim.knobs.max_connections:
            return False
        conn.state = self.core.connect()
        conn.state.shell = conn
        self.served[conn] = None
        return True

    def server_gets(self, conn: Conn, frames: list) -> None:
        if conn.closed or conn not in self.served:
            return
        self._take(conn, frames)
        if not conn.busy:
            self._serve(conn)

    def _take(self, conn: Conn, frames: list) -> None:
        inbox = conn.inbox
        for frame in frames:
            # ANNOUNCEs waiting behind a payload are bytes in the socket buffer: read later, one
            # after the other, they tell the core what one ANNOUNCE of all their chunks would.
            last = inbox[-1] if inbox else None
            if (type(frame) is wire.Announce and type(last) is wire.Announce and last.file_id == frame.file_id
                    and len(last.indices) + len(frame.indices) <= wire.MAX_ANNOUNCED):
                inbox[-1] = wire.Announce(frame.file_id, last.indices + frame.indices)
            else:
                inbox.append(frame)

    def _take_pending(self, conn: Conn) -> None:
        """The frames sent while a payload was in flight that have arrived by now; an event for the
        first of the others."""
        pending, now = conn.pending, self.sim.clock.now
        taken = 0
        for arrive, frames in pending:
            if arrive > now:
                break
            self._take(conn, frames)
            taken += 1
        del pending[:taken]
        if pending:
            self.sim.clock.at(pending[0][0], self._drain, conn)

    def _drain(self, conn: Conn) -> None:
        if conn.closed or conn not in self.served or conn.busy:
            return  # once the payload is out, _chunk_sent takes them
        self._take_pending(conn)
        self._serve(conn)

    def _serve(self, conn: Conn) -> None:
        """Read and answer frames, one at a time, until a payload is in flight."""
        core, state, sim = self.core, conn.state, self.sim
        now = sim.clock.now
        out: list = []
        while conn.inbox and not conn.busy and not conn.closed:
            for action in core.receive(state, conn.inbox.popleft(), now):
                if isinstance(action, SendChunk):
                    if out:
                        sim.to_client(conn, out)
                        out = []
                    conn.busy = state.in_payload = True
                    conn.flow = sim.network.start(
                        self.endpoint, conn.client.endpoint, action.length,
                        lambda c=conn, i=action.index: self._chunk_sent(c, i),
                    )
                elif isinstance(action, Send):
                    out.append(action.frame)
                elif isinstance(action, SendManifest):
                    out.append(wire.ManifestData(action.file_id, action.body))
                elif isinstance(action, Refuse):
                    out.append(action.error)
                    if action.close:
                        sim.to_client(conn, out)
                        sim.close(conn, by_server=True)
                        return
            if not conn.busy:
                out.extend(state.take_queued())
        if out:
            sim.to_client(conn, out)

    def _chunk_sent(self, conn: Conn, index: int) -> None:
        conn.busy = conn.state.in_payload = False
        conn.flow = None
        raw_id = self.source.raw_id
        self.core.chunk_sent(conn.state, raw_id, index, self.sim.clock.now)
        self.sim.to_client(conn, [wire.Chunk(raw_id, index, NO_BYTES, None), *conn.state.take_queued()])
        if conn.pending:
            self._take_pending(conn)
        self._serve(conn)

    def _flush_queued(self, conn: Conn) -> None:
        if not conn.busy and not conn.closed:
            frames = conn.state.take_queued()
            if frames:
                self.sim.to_client(conn, frames)

    def announce(self, index: int) -> None:
        """A chunk we downloaded is verified: the peers following the file hear of it."""
        # The core keeps its connections in a set (ordered by memory address): the sim sends
        # in the order the connections came, so that a seed gives one run.
        for state in sorted(self.core.announce(self.source.raw_id, index), key=_serial):
            self._flush_queued(state.shell)

    def server_lost(self, conn: Conn) -> None:
        """The client closed the connection (or its host died)."""
        if conn in self.served:
            del self.served[conn]
            self.core.disconnect(conn.state)
            if conn.flow is not None:
                self.sim.network.cancel(conn.flow)
                conn.flow = None


class Download:
    """Download.run and its workers, for one host and one file, around Swarm and Supervisor."""

    def __init__(self, host: SimHost, manifest: Manifest, entry: FileEntry) -> None:
        self.host = host
        self.sim = sim = host.sim
        self.manifest = manifest
        self.entry = entry
        s = sim.knobs.settings
        self.settings = s
        self.supervisor = Supervisor(s.wait, s.max_peers, s.refresh_interval, sim.clock.now, rng=random.Random(sim.rng.random()))
        self.swarm: Swarm | None = None
        self.conns: dict[tuple[str, int], Conn] = {}  # the workers: connecting or open
        self.flush_at: float | None = None  # when announcements waiting in outboxes are due
        self.spare: Conn | None = None  # the manifest's connection, kept for its worker
        self.generation = 0
        self.looking_up = False
        self.find_delay = 0.25
        self.failed: str | None = None
        self.from_origins = 0
        self.reader: int | None = None  # a reader streaming the file in order: the chunk it waits for

    # -- finding the file, its manifest ------------------------------------------------------------

    def start(self) -> None:
        self._find()

    def _find(self) -> None:
        host = self.host
        self.sim.tracker.lookup(self.entry.file_id, host.key, host.endpoint.delay, self._found)

    def _found(self, entry, complete, partial) -> None:
        if not self.host.alive:
            return
        self.supervisor.meet(complete, partial)
        if entry is not None and len(complete) + len(partial) >= self.settings.min_seeders:
            self._fetch_manifest(list(complete) + list(partial))
            return
        self.sim.clock.at(self.sim.clock.now + self.find_delay, self._find)
        self.find_delay = min(self.find_delay * 2, 2.0)

    def _fetch_manifest(self, holders: list) -> None:
        if not holders:
            self.sim.clock.at(self.sim.clock.now + self.find_delay, self._find)
            return
        server = self.sim.hosts_by_key[tuple(holders[0])]
        conn = Conn(self.host, server)
        conn.on_open = lambda: None
        conn.on_manifest = lambda: self._begin(conn)
        self.sim.connect(conn, first=[wire.GetManifest(self.manifest.raw_id)],
                         failed=lambda exc: self._fetch_manifest(holders[1:]))

    def _begin(self, spare: Conn) -> None:
        """The manifest is here: the swarm starts, the host shares what it verifies."""
        sim, host, s = self.sim, self.host, self.settings
        self.spare = spare
        spare.on_manifest = None
        self.swarm = Swarm(
            self.manifest, depth=s.pipeline_depth, max_bad=s.max_bad_chunks, chunk_timeout=s.chunk_timeout,
            shares=True, rng=random.Random(sim.rng.random()),
        )
        if sim.knobs.random_first is not None:
            self.swarm.plan.random_first = sim.knobs.random_first
        host.serve(Source(self.manifest, complete=False), super_seed=False)
        sim.register(host, partial=True)
        self.supervisor.begin(sim.clock.now)
        if sim.scenario.readers:
            self.reader = 0
            self._prioritize()
        self._loop(self.generation)

    def _prioritize(self, ahead: int = 4) -> None:
        """Download._prioritize for one reader (curl through the gateway): its next chunks first."""
        swarm, position = self.swarm, self.reader
        while position < self.manifest.num_chunks and position in swarm.verified:
            position += 1
        self.reader = position
        urgent = [i for i in range(position, min(position + ahead, self.manifest.num_chunks)) if i not in swarm.verified]
        swarm.prioritize(urgent, self.sim.clock.now)
        self.flush()

    # -- the supervisor loop -----------------------------------------------------------------------

    def _wake(self) -> None:
        """A worker ended: the loop runs now (unless it waits for the tracker)."""
        if self.swarm is None or self.swarm.finished or self.looking_up or self.failed:
            return
        self.generation += 1
        self.sim.clock.at(self.sim.clock.now, self._loop, self.generation)

    def _loop(self, generation: int) -> None:
        if generation != self.generation or self.swarm.finished or self.failed or not self.host.alive:
            return
        now = self.sim.clock.now
        if self.supervisor.lookup_due(now, len(self.conns)):
            self.looking_up = True
            self.sim.tracker.lookup(self.entry.file_id, self.host.key, self.host.endpoint.delay, self._looked_up)
            return
        self._rest()

    def _looked_up(self, entry, complete, partial) -> None:
        self.looking_up = False
        if self.swarm.finished or self.failed or not self.host.alive:
            return
        self.supervisor.meet(complete, partial)
        self._rest()

    def _rest(self) -> None:
        sim, supervisor, swarm = self.sim, self.supervisor, self.swarm
        now = sim.clock.now
        for peer in supervisor.candidates(self.conns.keys(), now):
            self._start_worker(peer)
        if self.spare is not None:  # its peer was not picked: not kept open for nothing
            sim.close(self.spare, by_server=False)
            self.spare = None
        stall = supervisor.stalled(now, len(self.conns), swarm.plan)
        if stall is not None:
            self.failed = stall
            self._end_all()
            sim.gave_up(self.host)
            return
        self.generation += 1
        sim.clock.at(now + (0.5 if self.conns else 0.25), self._loop, self.generation)

    # -- workers -----------------------------------------------------------------------------------

    def _start_worker(self, peer) -> None:
        sim = self.sim
        server = sim.hosts_by_key[tuple(peer)]
        spare = self.spare
        if spare is not None and spare.server is server and not spare.closed:
            self.spare = None
            self.conns[peer] = spare
            self._opened(peer, spare)
            return
        conn = Conn(self.host, server)
        self.conns[peer] = conn
        conn.on_open = lambda: self._opened(peer, conn)
        sim.connect(conn, first=[], failed=lambda exc: self._ended(peer, conn, exc))

    def _opened(self, peer, conn: Conn) -> None:
        swarm = self.swarm
        if swarm.finished or self.conns.get(peer) is not conn:
            return
        swarm.open(peer, conn.label, self.supervisor.book.is_origin(peer), True, self.sim.clock.now)
        self.flush()
        self._arm(peer, conn)

    def receive(self, conn: Conn, frames: list) -> None:
        """Frames from a peer, in order; then every session's queued frames go out."""
        swarm = self.swarm
        peer = conn.server.key
        if swarm is None or swarm.finished or self.conns.get(peer) is not conn or peer not in swarm.sessions:
            return
        now = self.sim.clock.now
        for frame in frames:
            effects = swarm.receive(peer, frame, now)
            if effects and self._carry_out(peer, conn, effects):
                break
        self.flush()
        if not swarm.finished and peer in swarm.sessions:
            self._arm(peer, conn)

    def _carry_out(self, peer, conn: Conn, effects: list) -> bool:
        """True if the worker ended (or the download finished)."""
        swarm = self.swarm
        pending = list(effects)
        while pending:
            effect = pending.pop(0)
            if isinstance(effect, Verify):
                more = swarm.receive(peer, Checked(effect.index, not conn.server.lies, None), self.sim.clock.now)
                pending[0:0] = more
            elif isinstance(effect, Delivered):
                self._delivered(peer, effect)
                if swarm.finished:
                    self._finished()
                    return True
            elif isinstance(effect, End):
                self._ended(peer, conn, effect.error)
                return True
            elif isinstance(effect, (Release, Rejected, Returned)):
                pass
        return False

    def _delivered(self, peer, effect: Delivered) -> None:
        sim, host = self.sim, self.host
        if effect.origin:
            self.from_origins += effect.length
        self.supervisor.delivered(peer, sim.clock.now)
        host.source.add(effect.index)
        host.announce(effect.index)
        sim.delivered(host, effect.index)
        if self.reader is not None and effect.index == self.reader and not self.swarm.finished:
            self._prioritize()

    def flush(self) -> None:
        """Download.flush: what is due now, and a timer for announcements that wait."""
        sim = self.sim
        for peer in self.swarm.sessions:
            if frames := self.swarm.take_due(peer, sim.clock.now):
                sim.to_server(self.conns[peer], frames)
        due = self.swarm.announcements_due()
        if due is not None and (self.flush_at is None or due < self.flush_at):
            self.flush_at = due
            sim.clock.at(due, self._flush_due, due)

    def _flush_due(self, at: float) -> None:
        if self.flush_at == at:  # (not replaced by an earlier one)
            self.flush_at = None
            if not self.swarm.finished:
                self.flush()

    def _wake_at(self, peer) -> float | None:
        """When the worker wakes without a frame: a silent peer's deadline, or the end of the
        first chunk's solo (PeerWorker.run's timeout)."""
        swarm = self.swarm
        deadline, ready = swarm.deadline(peer), swarm.ready_at(peer)
        if deadline is None or (ready is not None and ready < deadline):
            return ready
        return deadline

    def _arm(self, peer, conn: Conn) -> None:
        """One timer per worker, at the earliest moment it must wake."""
        wake = self._wake_at(peer)
        if wake is not None and (conn.timer_at is None or wake < conn.timer_at):
            conn.timer_at = wake
            self.sim.clock.at(wake, self._timer, peer, conn)

    def _timer(self, peer, conn: Conn) -> None:
        conn.timer_at = None
        swarm = self.swarm
        if swarm.finished or self.conns.get(peer) is not conn or peer not in swarm.sessions:
            return
        wake = self._wake_at(peer)
        if wake is None:
            return
        if self.sim.clock.now < wake:
            self._arm(peer, conn)
            return
        effects = swarm.tick(peer, self.sim.clock.now)
        if not self._carry_out(peer, conn, effects):
            self.flush()
            if peer in swarm.sessions:
                self._arm(peer, conn)

    def lost(self, conn: Conn) -> None:
        """The server closed the connection, or its host went away."""
        peer = conn.server.key
        if conn.on_manifest is not None:  # while fetching the manifest
            conn.on_manifest = None
            self.sim.clock.at(self.sim.clock.now + self.find_delay, self._find)
            return
        if self.conns.get(peer) is conn:
            self._ended(peer, conn, PeerClosed(f"{conn.label} closed the connection"))

    def _ended(self, peer, conn: Conn, exc: BaseException) -> None:
        """A worker's story ends: its chunks back to the plan, back-off or ban (_worker_ended)."""
        if self.conns.get(peer) is not conn:
            return
        sim, now = self.sim, self.sim.clock.now
        del self.conns[peer]
        sim.close(conn, by_server=False)
        self.swarm.close(peer, now)
        self.flush()
        if isinstance(exc, (PeerError, RemoteProtocolError, OSError)):
            self.supervisor.ended(peer, exc, conn.label, now)
        self._wake()

    def _finished(self) -> None:
        """Every chunk verified: the workers close, the tracker hears the file is complete."""
        sim, host = self.sim, self.host
        host.done_at = sim.clock.now
        self._end_all()
        sim.completed(host)

    def _end_all(self) -> None:
        now = self.sim.clock.now
        for peer, conn in list(self.conns.items()):
            self.sim.close(conn, by_server=False)
            self.swarm.close(peer, now)
        self.conns.clear()
        if self.spare is not None:
            self.sim.close(self.spare, by_server=False)
            self.spare = None


def _serial(state: PeerState) -> int:
    return state.shell.serial


def connect_failure(conn: Conn) -> PeerError:
    return PeerConnectError(f"cannot connect to {conn.label}: connection refused")
