"""A seeder's memory and descriptors under connections that misbehave on purpose (issue 12,
items 9 to 11): frames a server never receives sent before HELLO, manifests asked for and
never read, TLS connections that never say ClientHello."""

import socket
import struct
import time
from pathlib import Path

from p2p_shared import wire
from tools.localswarm import LocalSwarm, random_file, sha256_file

from .conftest import scrape, wait_until
from .test_security import tls_flags, two_cas  # noqa: F401 (a fixture)


def memory_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (the peak) of a process, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1]) / 1024


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def closed_by_peer(sock: socket.socket) -> bool:
    """Reads until the other side closes; False if it is still open after the socket timeout."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def test_frame_headers_claiming_32_mib_before_hello_are_refused_with_nothing_allocated(tmp_path):
    data = random_file(tmp_path / "seed" / "f.bin", 1 << 20)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data], "--handshake-timeout", "60")
        before = memory_mb(seeder.proc.pid, "VmRSS")
        socks = [socket.create_connection(("127.0.0.1", seeder.port), timeout=5) for _ in range(32)]
        try:
            for s in socks:  # five bytes each: a MANIFEST frame of 32 MiB is on its way
                s.sendall(struct.pack("!BI", wire.FrameType.MANIFEST, 32 << 20))
            assert all(closed_by_peer(s) for s in socks)  # refused at once, not at the handshake timeout
            grown = memory_mb(seeder.proc.pid, "VmHWM") - before
        finally:
            for s in socks:
                s.close()
    assert grown < 32, f"{grown:.0f} MB"  # one 32 MiB body would show; 32 of them were +1 GB


def test_pipelined_manifest_requests_never_read_hold_a_few_hundred_kib_not_the_answers(tmp_path):
    data = random_file(tmp_path / "seed" / "f.bin", 8 << 20)  # 8192 chunks of 1 KiB: a 256 KiB manifest
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data], "--chunk-size", "1024", "--connection-timeout", "3")
        pid = seeder.proc.pid
        fid = bytes.fromhex(swarm.lookup("f.bin").file.file_id)
        baseline_fds, before = open_fds(pid), memory_mb(pid, "VmRSS")
        burst = wire.encode(wire.Hello(1)) + wire.encode(wire.GetManifest(fid)) * ((64 << 10) // 37)
        socks = []
        for _ in range(3):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", seeder.port))
            s.sendall(burst)  # 1,771 manifests asked for, 440 MB of answers; none read
            socks.append(s)
        try:
            # Accepted, then dropped after the connection timeout; its peak memory tells the rest.
            wait_until(lambda: open_fds(pid) >= baseline_fds + 3)
            wait_until(lambda: open_fds(pid) == baseline_fds, timeout=30)
            grown = memory_mb(pid, "VmHWM") - before
        finally:
            for s in socks:
                s.close()
    assert grown < 32, f"{grown:.0f} MB"  # three connections were +1.3 GB


def test_tls_connections_that_never_say_hello_are_capped_and_the_refusals_logged_once(tmp_path, two_cas):
    certs, _ = two_cas
    data = random_file(tmp_path / "seed" / "f.bin", 1 << 20)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder(
            [data], *tls_flags(certs, "seeder"), "--max-connections-per-address", "4", "--handshake-timeout", "60",
            metrics=True,
        )
        silent = []
        try:
            for _ in range(40):  # from 127.0.0.2: TCP only, never a ClientHello
                s = socket.socket()
                s.settimeout(5)
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", seeder.port))
                silent.append(s)
            started = time.monotonic()
            refused = [s for s in silent[4:] if closed_by_peer(s)]
            assert len(refused) == 36 and time.monotonic() - started < 5  # at once, not after 60 s
            assert scrape(seeder.metrics_port)[("p2p_seeder_requests_refused_total", (("code", "too_many_connections"),))] == 36
            # A member from another address is still served, over TLS.
            leecher = swarm.leecher("f.bin", tmp_path / "out", *tls_flags(certs, "leecher"), "--no-share")
            assert leecher.wait(60) == 0, leecher.output
        finally:
            for s in silent:
                s.close()
    assert sha256_file(tmp_path / "out" / "f.bin") == sha256_file(data)
    lines = [e for e in seeder.events() if "refused" in e.get("event", "")]
    assert len(lines) == 1 and lines[0]["refused"] == 1, lines  # then quiet for REFUSAL_LOG_EVERY seconds
