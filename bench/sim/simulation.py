"""One simulated swarm: hosts, the tracker, the network, the clock; run it, read the results."""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field

from p2p_shared import PEER_VERSION, wire
from p2p_shared.catalog import file_entry
from p2p_shared.manifest import DIGEST_SIZE, Manifest, chunk_count

from .hosts import Conn, Download, Knobs, SimHost, Source, connect_failure
from .network import Clock, Endpoint, Network
from .scenarios import Scenario
from .tracker import Tracker


@dataclass
class Result:
    scenario: Scenario
    completion: dict[int, float]  # host index -> seconds from its arrival to its last chunk
    done_at: dict[int, float]  # host index -> virtual time it finished
    failed: dict[int, str]  # host index -> why it did not finish (a host that left on purpose is not here)
    left: int  # leechers that left (or died) before finishing, as the scenario said
    origin_bytes: int
    size: int
    events: int
    wall_s: float
    flows: int
    lookups: int
    extra: dict = field(default_factory=dict)


class Simulation:
    def __init__(self, scenario: Scenario, knobs: Knobs, seed: int = 1) -> None:
        self.scenario = scenario
        self.knobs = knobs
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.network = Network(self.clock)
        size, chunk = scenario.size, scenario.chunk_size
        digests = hashlib.sha256(f"{size}/{chunk}".encode()).digest() * chunk_count(size, chunk)
        assert len(digests) == chunk_count(size, chunk) * DIGEST_SIZE
        self.manifest = Manifest("payload.bin", size, chunk, digests)
        self.entry = file_entry(self.manifest)
        self.tracker = Tracker(self.clock, scenario.tracker_delay, random.Random(self.rng.random()))
        self.hosts: list[SimHost] = []
        self.hosts_by_key: dict[tuple[str, int], SimHost] = {}
        self.delivered_chunks = 0
        self._serials = 0
        self.leechers = 0
        self.finished = 0
        self.gone = 0  # leechers that will not finish: left, died or failed
        for spec in scenario.seeders:
            host = self._add(spec, origin=True)
            host.serve(Source(self.manifest, complete=True), super_seed=knobs.super_seed)
            self._register_now(host, partial=False)
            if spec.dies_at is not None:
                self.clock.at(spec.dies_at, self.die, host)
        for spec in scenario.leechers:
            host = self._add(spec, origin=False)
            self.leechers += 1
            host.arrived_at = spec.arrive
            self.clock.at(spec.arrive + scenario.startup_s, self._arrive, host)
            if spec.leaves_at is not None:
                self.clock.at(spec.arrive + spec.leaves_at, self.leave, host)
            if spec.dies_at is not None:
                self.clock.at(spec.dies_at, self.die, host)

    def next_serial(self) -> int:
        self._serials += 1
        return self._serials

    def _add(self, spec, origin: bool) -> SimHost:
        endpoint = Endpoint(spec.up / 8, spec.down / 8, spec.delay)
        host = SimHost(self, len(self.hosts), endpoint, origin=origin, lies=spec.lies)
        self.hosts.append(host)
        self.hosts_by_key[host.key] = host
        return host

    # -- the tracker -----------------------------------------------------------------------------

    def _register_now(self, host: SimHost, partial: bool) -> None:
        self.tracker.registry.register(host.key, [self.entry], 0.0, partial=partial)
        host.registered = True
        self.clock.at(self.tracker.interval, self._heartbeat, host)

    def register(self, host: SimHost, partial: bool) -> None:
        self.tracker.register(host.key, self.entry, partial, host.endpoint.delay)
        if not host.registered:
            host.registered = True
            self.clock.at(self.clock.now + self.tracker.interval, self._heartbeat, host)

    def _heartbeat(self, host: SimHost) -> None:
        if host.alive:
            self.tracker.heartbeat(host.key, host.endpoint.delay)
            self.clock.at(self.clock.now + self.tracker.interval, self._heartbeat, host)

    # -- hosts come and go -----------------------------------------------------------------------

    def _arrive(self, host: SimHost) -> None:
        if not host.alive:
            return
        host.download = Download(host, self.manifest, self.entry)
        host.download.start()

    def completed(self, host: SimHost) -> None:
        self.finished += 1
        self.register(host, partial=False)
        if self.scenario.leave_on_complete:
            self.leave(host)

    def leave(self, host: SimHost) -> None:
        """A graceful exit: unregistered, every connection closed."""
        if not host.alive:
            return
        if host.done_at is None:
            self.gone += 1
        host.left_at = self.clock.now
        self.tracker.unregister(host.key, host.endpoint.delay)
        self._drop(host)

    def die(self, host: SimHost) -> None:
        """SIGKILL: connections reset, the tracker not told (the entry expires)."""
        if not host.alive:
            return
        if not host.origin and host.done_at is None:
            self.gone += 1
        host.left_at = self.clock.now
        self._drop(host)

    def _drop(self, host: SimHost) -> None:
        if host.download is not None and host.download.swarm is not None and not host.download.swarm.finished:
            host.download.failed = host.download.failed or "left"
            host.download._end_all()
        host.alive = False
        for conn in list(host.served):
            self.close(conn, by_server=True)

    def gave_up(self, host: SimHost) -> None:
        """Its download stopped with a reason (the supervisor's stall)."""
        self.gone += 1

    def delivered(self, host: SimHost, index: int) -> None:
        self.delivered_chunks += 1
        kill = self.scenario.kill_origin_at
        if kill is not None and self.delivered_chunks == int(kill * self.leechers * self.manifest.num_chunks):
            self.die(self.hosts[0])

    # -- connections -----------------------------------------------------------------------------

    def connect(self, conn: Conn, first: list, failed) -> None:
        """TCP set-up, then HELLO (with `first` frames after it): open two round trips later."""
        client, server = conn.client, conn.server
        delay = client.endpoint.delay + server.endpoint.delay
        self.clock.at(self.clock.now + delay, self._syn, conn, first, failed, delay)

    def _syn(self, conn: Conn, first: list, failed, delay: float) -> None:
        if conn.closed:
            return
        if not conn.server.accept(conn):
            conn.closed = True
            self.clock.at(self.clock.now + delay, failed, connect_failure(conn))
            return
        hello = wire.Hello(PEER_VERSION, wire.FLAG_ANNOUNCE | wire.FLAG_SHARES)
        # SYN-ACK back, then the HELLO and what follows it arrive a round trip after the SYN.
        self.clock.at(self.clock.now + 2 * delay, conn.server.server_gets, conn, [hello, *first])

    def to_server(self, conn: Conn, frames: list) -> None:
        arrive = self.clock.now + conn.client.endpoint.delay + conn.server.endpoint.delay
        if conn.busy or conn.pending:
            # The server reads nothing while it sends a payload: frames for it wait with no event
            # of their own, and it takes those that have arrived when it reads again (_chunk_sent).
            conn.pending.append((arrive, frames))
            return
        self.clock.at(arrive, conn.server.server_gets, conn, frames)

    def to_client(self, conn: Conn, frames: list) -> None:
        delay = conn.client.endpoint.delay + conn.server.endpoint.delay
        self.clock.at(self.clock.now + delay, self._client_gets, conn, frames)

    def _client_gets(self, conn: Conn, frames: list) -> None:
        if conn.closed or not conn.client.alive:
            return
        download = conn.client.download
        if not conn.open:
            if not frames or not isinstance(frames[0], wire.Hello):
                return
            conn.open = True
            frames = frames[1:]
            if conn.on_open is not None:
                conn.on_open()
        if frames and isinstance(frames[0], wire.ManifestData):
            frames = frames[1:]
            if conn.on_manifest is not None:
                conn.on_manifest()
        if frames and download is not None:
            download.receive(conn, frames)

    def close(self, conn: Conn, by_server: bool) -> None:
        """One side closes; the other hears of it one delay later."""
        if conn.closed:
            return
        conn.closed = True
        delay = conn.client.endpoint.delay + conn.server.endpoint.delay
        if by_server:
            if conn.flow is not None:
                self.network.cancel(conn.flow)
                conn.flow = None
            conn.server.served.pop(conn, None)
            conn.server.core.disconnect(conn.state)
            download = conn.client.download
            if download is not None:
                self.clock.at(self.clock.now + delay, download.lost, conn)
        else:
            self.clock.at(self.clock.now + delay, conn.server.server_lost, conn)

    # -- running -----------------------------------------------------------------------------------

    def run(self, limit: float = 3600.0) -> Result:
        started = time.perf_counter()
        self.clock.run(until=limit, stop=lambda: self.finished + self.gone >= self.leechers)
        wall = time.perf_counter() - started
        completion, done_at, failed, left = {}, {}, {}, 0
        for host in self.hosts:
            if host.origin:
                continue
            if host.done_at is not None:
                completion[host.index] = host.done_at - host.arrived_at
                done_at[host.index] = host.done_at
            elif host.left_at is not None:
                left += 1
            else:
                download = host.download
                failed[host.index] = (download.failed if download else None) or "unfinished"
        origin_bytes = sum(h.endpoint.sent for h in self.hosts if h.origin)
        return Result(self.scenario, completion, done_at, failed, left, origin_bytes, self.manifest.size, self.clock.events,
                      wall, self.network.flows, self.tracker.lookups)
