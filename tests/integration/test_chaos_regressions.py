"""Bugs the chaos soak found, each reproduced alone (README, "Reliability: the chaos soak").

1. A peer worker that ended with an error while its download was finishing (cancelled at that
   moment, on Python 3.11 `asyncio.wait_for` may let the answer it was given win over the
   cancellation, and the worker then raises the peer's refusal) was never read: asyncio logged
   "Task exception was never retrieved" with a traceback at an error level (seed 22, a peer that
   had dropped the file refusing it as the download ended). The download now reads every
   worker's end.
2. A cached file that rotted on disk was refused (409) through its host's gateway for ever; it
   is now fetched again.
3. A tracker replica started while Redis failed over exited; it now waits for the registry.
4. A peer server stopped with a connection open logged an InvalidStateError traceback.
5. A gateway client that hung up mid-file made aiohttp log a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import time
import types
import urllib.error
import urllib.request


from p2p_shared.errors import PeerBanned
from p2p_shared.net import download as download_module
from tools.localswarm import LocalSwarm, Service, free_port, random_file, service_argv


class _FakeSupervisor:
    """Two peers at once; nothing stalls, no lookup is due."""

    def __init__(self) -> None:
        self.book = types.SimpleNamespace(is_origin=lambda peer: False)
        self.given = False

    def begin(self, now):
        pass

    def lookup_due(self, now, count):
        return False

    def candidates(self, running, now):
        if self.given:
            return []
        self.given = True
        return [("198.18.0.5", 7001), ("198.18.0.6", 7001)]

    def stalled(self, now, count, plan):
        return None


class _Worker:
    """The first peer delivers the last chunk (the swarm finishes); the second is waiting, and
    when cancelled raises its peer's refusal instead, as a worker can when the answer and the
    cancellation come together."""

    def __init__(self, download, peer, origin, spare) -> None:
        self.download, self.peer, self.label = download, peer, f"{peer[0]}:{peer[1]}"

    async def run(self) -> None:
        if self.peer[0].endswith(".5"):
            self.download.swarm.finished = True
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise PeerBanned(f"{self.label} does not serve this file (unknown_file: no such file here)") from None

    def flush(self) -> None:
        pass


def test_a_worker_that_ends_with_an_error_as_its_download_finishes_is_read_not_logged(monkeypatch):
    monkeypatch.setattr(download_module, "PeerWorker", _Worker)
    unretrieved: list[dict] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: unretrieved.append(context))
        download = object.__new__(download_module.Download)
        closed = []
        download.swarm = types.SimpleNamespace(
            finished=False, manifest=types.SimpleNamespace(file_id=b"\x01" * 32), plan=None,
            close=lambda peer, now: closed.append(peer) or 0, announcements_due=lambda: None,
        )
        download._supervisor = _FakeSupervisor()
        download._part = object()
        download._finished = asyncio.Event()
        download._workers, download._spare, download._spare_timer, download._flush_timer = {}, {}, None, None
        download.peer_count, download.watchers = 0, []
        download.metrics = types.SimpleNamespace(peers_active=types.SimpleNamespace(inc=lambda n=1: None, dec=lambda n=1: None))
        await download._supervise()
        assert closed  # every worker's peer closed in the swarm
        del download
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(main())
    gc.collect()
    assert not unretrieved, [c.get("message") for c in unretrieved]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_cached_file_that_rotted_on_disk_is_fetched_again_not_refused_for_ever(tmp_path, swarm):
    """2. A complete file in a peer's cache with bytes flipped on disk (its size and mtime kept)
    was answered `409 changed` at every request through that host's gateway, for as long as the
    peer ran: the soak's reader of the rotten file (seed 5) gave up. The cache now lets the
    changed copy go and the gateway fetches the file through the swarm again."""
    data = random_file(tmp_path / "seed" / "rot.bin", 3 << 20)
    swarm.add_seeder([data])
    peer = swarm.add_peer(tmp_path / "cache")
    assert _get(f"{peer.url}/files/rot.bin") == (200, data.read_bytes())
    [cached] = [p for p in (tmp_path / "cache" / "files").glob("*/rot.bin")]
    stat = cached.stat()
    with open(cached, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"\x00" * 16)
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    status, body = _get(f"{peer.url}/files/rot.bin")
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data.read_bytes()).digest()
    assert hashlib.sha256(cached.read_bytes()).digest() == hashlib.sha256(data.read_bytes()).digest()  # whole again
    peer.wait_for("cache: a file changed on disk since it was verified; fetching it again", timeout=5)
    assert "Traceback" not in peer.output


def test_a_tracker_replica_started_while_redis_is_down_waits_for_it_and_serves(tmp_path, redis_server):
    """3. A tracker replica the nemesis started again while the Redis primary was being replaced
    (seed 5) could not reach the registry and exited (`cannot use the registry ...`): the swarm
    ran on one replica for the rest of the run. A starting tracker now asks a registry that does
    not answer again for up to 15 s (longer than a failover) before it gives up."""
    data = random_file(tmp_path / "seed" / "late.bin", 1000)
    redis_server.kill()
    with LocalSwarm(tmp_path, heartbeat=1.0, registry=redis_server.url) as swarm:
        port = free_port(socket.SOCK_DGRAM)
        tracker = Service("tracker", service_argv(
            "tracker", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--registry", redis_server.url,
        ), swarm.env)
        swarm.others.append(tracker)
        time.sleep(3)  # Redis is away for 3 s of the tracker's start
        assert tracker.proc.poll() is None, tracker.output
        redis_server.start()
        tracker.wait_for("tracker listening", timeout=15)
        swarm.tracker_port = port
        swarm.add_seeder([data])
        assert len(swarm.lookup("late.bin").peers) == 1
        assert "Traceback" not in tracker.output


def test_a_seeder_stopped_with_a_connection_open_exits_without_a_traceback(tmp_path, swarm):
    """4. A peer server stopped (SIGTERM) while a connection was open logged "Unhandled exception
    in client_connected_cb" with an InvalidStateError traceback: the connection's `served` future
    was cancelled with the server, then set (the soak restarting a peer under another clock)."""
    data = random_file(tmp_path / "seed" / "open.bin", 1000)
    seeder = swarm.add_seeder([data])
    with socket.create_connection(("127.0.0.1", seeder.port)) as idle:  # says nothing: its read waits
        time.sleep(0.5)
        assert seeder.stop() == 0
        del idle
    assert "Traceback" not in seeder.output and "InvalidStateError" not in seeder.output, seeder.output


def test_a_gateway_client_that_hangs_up_mid_file_is_one_line_not_a_traceback(tmp_path, swarm):
    """5. A client that hung up while the gateway streamed a file still downloading (curl killed,
    a timeout) made aiohttp log "Error handling request" with a traceback at an error level. The
    gateway now says it in one line; the file still completes into the cache."""
    data = random_file(tmp_path / "seed" / "gone.bin", 4 << 20)
    swarm.add_seeder([data], "--max-upload-rate", "1000000")  # 4 s for the file: the client leaves first
    peer = swarm.add_peer(tmp_path / "cache")
    with socket.create_connection(("127.0.0.1", peer.http_port)) as client:
        client.sendall(b"GET /files/gone.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200")
    peer.wait_for("cached", timeout=30)
    peer.wait_for("gateway: the client went away", timeout=5)
    assert "Traceback" not in peer.output and "Error handling request" not in peer.output, peer.output
