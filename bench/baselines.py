"""The physical yardsticks, measured in the same run as the swarm: hashlib alone, and one TCP
stream on loopback moving the file with sendfile into recv_into, SHA-256 per chunk and pwrite."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import time
from pathlib import Path

from p2p_shared.storage import DIRECT_ALIGN

CHUNK = 512 * 1024


def hashlib_seconds(size: int) -> float:
    """SHA-256 of `size` bytes already in memory, chunk by chunk, on one core."""
    buffer = memoryview(os.urandom(CHUNK))
    started = time.perf_counter()
    for _ in range(size // CHUNK):
        hashlib.sha256(buffer).digest()
    return time.perf_counter() - started


def hashlib_file_seconds(path: Path) -> float:
    """Read and hash a file chunk by chunk on one thread: what a seeder must beat at start-up."""
    started = time.perf_counter()
    buffer = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            hashlib.sha256(memoryview(buffer)[:n]).digest()
    return time.perf_counter() - started


def _send(path: str, ports: multiprocessing.Queue) -> None:
    import resource

    with socket.create_server(("127.0.0.1", 0)) as server:
        ports.put(server.getsockname()[1])
        conn, _ = server.accept()
        before = resource.getrusage(resource.RUSAGE_SELF)
        with conn, open(path, "rb") as f:
            conn.sendfile(f)
        after = resource.getrusage(resource.RUSAGE_SELF)
        ports.put((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime))


def tcp_seconds(path: Path, out: Path, verify: bool, sender_cpu: list | None = None, direct: bool = False) -> float:
    """One stream: sendfile in a sender process; recv_into a 512 KiB buffer, SHA-256, pwrite.
    `sender_cpu` gets the sender's (user, kernel) CPU seconds from its first sendfile to its last.
    `direct`: the buffer page-aligned and whole chunks written with O_DIRECT, as the leecher does."""
    import mmap

    size = path.stat().st_size
    ports: multiprocessing.Queue = multiprocessing.Queue()
    sender = multiprocessing.Process(target=_send, args=(str(path), ports))
    sender.start()
    port = ports.get(timeout=30)
    view = memoryview(mmap.mmap(-1, CHUNK) if direct else bytearray(CHUNK))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    whole = os.open(out, os.O_WRONLY | os.O_DIRECT) if direct else fd  # (a partial last chunk: through the cache)
    try:
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as conn:
            offset = 0
            while offset < size:
                want, got = min(CHUNK, size - offset), 0
                while got < want:
                    n = conn.recv_into(view[got:want])
                    if n == 0:
                        raise ConnectionError("sender closed early")
                    got += n
                if verify:
                    hashlib.sha256(view[:want]).digest()
                os.pwrite(fd if want % DIRECT_ALIGN else whole, view[:want], offset)
                offset += want
        elapsed = time.perf_counter() - started
        if sender_cpu is not None:
            sender_cpu.extend(ports.get(timeout=30))
    finally:
        if whole != fd:
            os.close(whole)
        os.close(fd)
        sender.join(30)
    return elapsed


def one_chunk_seconds(port: int, file_id: str, chunk_size: int) -> float:
    """One chunk from a seeder, as a downloader gets it: connect and greet, ask for chunk 0,
    receive it and check its SHA-256 against the manifest. The yardstick of the gateway's time
    to first byte, which must pay this and find the file (a lookup, the manifest) besides."""
    import asyncio

    from p2p_shared import wire
    from p2p_shared.manifest import Manifest
    from p2p_shared.net.peer_client import open_peer

    async def once() -> float:
        raw = bytes.fromhex(file_id)
        probe = await open_peer("127.0.0.1", port, chunk_size=1, depth=0, timeout=10)
        try:
            probe.send(wire.GetManifest(raw))
            manifest = Manifest.decode_verified((await probe.expect(wire.ManifestData, 10)).data, file_id)
        finally:
            probe.close()
        started = time.perf_counter()
        conn = await open_peer("127.0.0.1", port, chunk_size=chunk_size, depth=1, timeout=10)
        try:
            conn.send(wire.Request(raw, 0))
            chunk = await conn.expect(wire.Chunk, 10)
            if hashlib.sha256(chunk.data).digest() != manifest.chunk_digest(0):
                raise RuntimeError("the seeder sent a bad chunk")
            return time.perf_counter() - started
        finally:
            conn.close()

    return asyncio.run(once())


def tcp_cpu(path: Path, out: Path, verify: bool, direct: bool = False) -> dict:
    """`tcp_seconds`, with the receiving thread's CPU time (user and kernel apart), and the
    sending process's."""
    import resource

    sender: list[float] = []
    before = resource.getrusage(resource.RUSAGE_THREAD)
    seconds = tcp_seconds(path, out, verify, sender, direct)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    return {"seconds": seconds, "utime": after.ru_utime - before.ru_utime, "stime": after.ru_stime - before.ru_stime,
            "sender": {"utime": sender[0], "stime": sender[1]}}


LT_PEER = Path(__file__).with_name("net") / "lt_peer.py"
LT_PYTHON = "/usr/bin/python3"  # Debian's python3-libtorrent


def libtorrent_available() -> bool:
    import subprocess

    return subprocess.run([LT_PYTHON, "-c", "import libtorrent"], capture_output=True).returncode == 0


class LibtorrentSwarm:
    """libtorrent on loopback, the reference: `seeds` seeding peers, each on an address of its
    own (127.0.0.2, .3, ...: libtorrent takes one connection per IP by default), and a leecher
    per `fetch()` connected to all of them. TCP only (bench/net/lt_peer.py)."""

    def __init__(self, data: Path, work: Path, seeds: int = 3) -> None:
        import subprocess

        from tools.localswarm import Service, free_port

        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.torrent = work / "file.torrent"
        subprocess.run([LT_PYTHON, str(LT_PEER), "torrent", str(data), str(self.torrent)], check=True, capture_output=True)
        self.addresses = [f"127.0.0.{2 + i}:{free_port()}" for i in range(seeds)]
        self.seeds = [
            Service("lt-seed", [LT_PYTHON, str(LT_PEER), "peer", str(self.torrent), str(data.parent), a, "--seed"])
            for a in self.addresses
        ]
        for seed in self.seeds:
            seed.wait_for("ready", timeout=300)

    def fetch(self, out: Path, timeout: float = 120.0) -> dict | None:
        """One leecher, spawn to the whole file held: wall time and its CPU (user, kernel);
        None if it did not finish in `timeout` seconds (its last lines are printed)."""
        import signal

        from tools.localswarm import Service, free_port

        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        leecher = Service("lt-leech", [LT_PYTHON, str(LT_PEER), "peer", str(self.torrent), str(out),
                                       f"127.0.0.1:{free_port()}", "--connect", *self.addresses])
        try:
            leecher.wait_for("finished", timeout=timeout)
            seconds = time.perf_counter() - started
        except TimeoutError as exc:
            print(f"libtorrent's leecher did not finish; this round has no libtorrent figure: {exc}", flush=True)
            return None
        finally:
            leecher.send_signal(signal.SIGTERM)
            _, usage = leecher.wait_with_usage()
        return {"seconds": seconds, "utime": usage.ru_utime, "stime": usage.ru_stime}

    def stop(self) -> None:
        for seed in self.seeds:
            seed.stop()
