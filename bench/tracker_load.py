"""Load on a real tracker process from other processes: the real message mix (heartbeats and
lookups) from many source ports. Capacity is a closed loop with a window of requests in flight;
latency is an open loop at a fixed rate."""

from __future__ import annotations

import multiprocessing
import os
import selectors
import socket
import statistics
import time

from p2p_shared import messages

FILE = messages.FileEntry(file_id="ab" * 32, name="load.bin", size=1 << 30, chunk_size=512 * 1024)


def seeder_host(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def connection_id(address: tuple[str, int]) -> int:
    """One id serves every socket of this host: the tracker binds ids to the source address."""
    from tools.localswarm import tracker_request

    return tracker_request(address, messages.Connect()).conn


def _templates(seeders: int, conn: int) -> list[bytes]:
    """70% heartbeats from registered seeders, 30% lookups, like a swarm at rest. Encoded once
    by the real encoder with a txn placeholder, so the generator spends its time sending."""
    out = []
    for i in range(max(10, min(seeders, 1000))):
        if i % 10 < 7:
            message: messages.Request = messages.Heartbeat(txn=999_999_999, conn=conn, port=7000, host=seeder_host(i % seeders))
        else:
            message = messages.Lookup(txn=999_999_999, conn=conn, name=FILE.name)
        out.append(messages.encode(message).replace(b"999999999", b"%d"))
    return out


def _request(templates: list[bytes], txn: int) -> bytes:
    return templates[txn % len(templates)] % txn


def _txn(reply: bytes) -> int:
    start = reply.index(b'"txn":') + 6
    return int(reply[start : reply.index(b",", start)])


def _sockets(count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        socks.append(s)
    return socks


def register(address: tuple[str, int], count: int, window: int = 64) -> int:
    """Register `count` seeders (distinct advertised hosts), `window` at a time; returns acks."""
    conn = connection_id(address)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    acked, sent = 0, 0
    pending: set[int] = set()
    while acked < count:
        while sent < count and len(pending) < window:
            sock.sendto(messages.encode(messages.Register(txn=sent + 1, conn=conn, port=7000, host=seeder_host(sent), files=[FILE])), address)
            pending.add(sent + 1)
            sent += 1
        try:
            reply = messages.decode(sock.recv(65536))
        except TimeoutError:  # lost datagrams: send those again
            for txn in sorted(pending):
                sock.sendto(messages.encode(messages.Register(txn=txn, conn=conn, port=7000, host=seeder_host(txn - 1), files=[FILE])), address)
            continue
        if reply.txn in pending:
            pending.discard(reply.txn)
            acked += 1
    sock.close()
    return acked


def _closed_loop(address, seeders: int, conn: int, seconds: float, sockets: int, window: int, results) -> None:
    templates = _templates(seeders, conn)
    socks = _sockets(sockets)
    selector = selectors.DefaultSelector()
    for s in socks:
        selector.register(s, selectors.EVENT_READ)
    counter = 0
    for s in socks:
        for _ in range(window):
            counter += 1
            s.sendto(_request(templates, counter), address)
    answered = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for key, _ in selector.select(0.2):
            s = key.fileobj
            while True:
                try:
                    s.recv(65536)
                except BlockingIOError:
                    break
                answered += 1
                counter += 1
                s.sendto(_request(templates, counter), address)
    results.put(answered)
    for s in socks:
        s.close()


def capacity(address: tuple[str, int], seeders: int, seconds: float = 5.0, cpu: int | None = None) -> float:
    """Sustained answers per second, from one load process (pinned to `cpu` if given)."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    worker = multiprocessing.Process(target=_closed_loop, args=(address, seeders, connection_id(address), seconds, 64, 2, results))
    worker.start()
    if cpu is not None:
        set_affinity(worker.pid, cpu)
    answered = results.get(timeout=seconds + 30)
    worker.join(10)
    return answered / seconds


def set_affinity(pid: int, cpu: int) -> None:
    try:
        os.sched_setaffinity(pid, {cpu})
    except (AttributeError, OSError):  # not Linux, or fewer CPUs: run unpinned
        pass


def _open_loop(address, seeders: int, conn: int, rate: float, seconds: float, results) -> None:
    templates = _templates(seeders, conn)
    socks = _sockets(64)
    selector = selectors.DefaultSelector()
    for s in socks:
        selector.register(s, selectors.EVENT_READ)
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    interval = 1.0 / rate
    total = int(rate * seconds)
    txn = 0
    start = time.perf_counter()
    while txn < total or (sent_at and time.perf_counter() - start < seconds + 2):
        now = time.perf_counter()
        while txn < total and start + txn * interval <= now:
            txn += 1
            socks[txn % len(socks)].sendto(_request(templates, txn), address)
            sent_at[txn] = time.perf_counter()
        wait = max(0.0, start + txn * interval - time.perf_counter()) if txn < total else 0.05
        for key, _ in selector.select(wait):
            while True:
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    break
                t0 = sent_at.pop(_txn(data), None)
                if t0 is not None:
                    rtts.append(time.perf_counter() - t0)
    for s in socks:
        s.close()
    rtts.sort()
    results.put({
        "rate": rate,
        "sent": total,
        "answered": len(rtts),
        "p50_ms": 1000 * statistics.median(rtts),
        "p99_ms": 1000 * rtts[int(0.99 * (len(rtts) - 1))],
    })


def latency(address: tuple[str, int], seeders: int, rate: float, seconds: float = 3.0, cpu: int | None = None) -> dict:
    """Round-trip times at a fixed request rate (open loop), p50 and p99 in milliseconds, from
    one load process (pinned to `cpu` if given)."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    worker = multiprocessing.Process(target=_open_loop, args=(address, seeders, connection_id(address), rate, seconds, results))
    worker.start()
    if cpu is not None:
        set_affinity(worker.pid, cpu)
    answer = results.get(timeout=seconds + 60)
    worker.join(10)
    return answer
