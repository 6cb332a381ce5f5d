"""Bad input to real services: answered with typed errors or dropped, never a crash."""

import os
import socket
import struct
from pathlib import Path

import pytest

from p2p_shared import messages, wire
from tools.localswarm import LocalSwarm, free_port, random_file, service_argv, start_listening, tracker_request

from .conftest import scrape, wait_until


def test_tracker_survives_garbage_and_counts_it(tmp_path):
    port = metrics = 0

    def argv() -> list[str]:
        nonlocal port, metrics
        port, metrics = free_port(socket.SOCK_DGRAM), free_port()
        return service_argv("tracker", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics))

    tracker = start_listening("tracker", argv, "tracker listening", {"P2P_LOG_FORMAT": "json"})
    try:
        garbage = [b"", b"\x00" * 10, b"not json", b'{"type":"register","port":0}', b"x" * 60000,
                   b'{"type":"lookup","name":"../../etc/passwd"}']
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in garbage:
                s.sendto(data, ("127.0.0.1", port))
        # The tracker handles datagrams in order: once this is answered, all garbage was seen.
        reply = tracker_request(("127.0.0.1", port), messages.Lookup(name="x"))
        assert reply.type == "peers" and reply.peers == []
        samples = scrape(metrics)
        dropped = sum(v for (name, _), v in samples.items() if name == "p2p_tracker_malformed_datagrams_total")
        assert dropped == len(garbage)
        assert tracker.proc.poll() is None
    finally:
        tracker.stop()


@pytest.fixture
def one_seeder(tmp_path):
    data = random_file(tmp_path / "seed" / "s.bin", 1000, )
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data], "--chunk-size", "400")
        file_id = swarm.lookup("s.bin").file.file_id
        yield seeder.port, bytes.fromhex(file_id), data.read_bytes()


def talk(sock: socket.socket, *events) -> list:
    sock.sendall(b"".join(e if isinstance(e, bytes) else wire.encode(e) for e in events))
    reader = wire.FrameReader()
    got = []
    while len(got) < len(events):
        data = sock.recv(65536)
        if not data:
            break
        reader.receive_data(data)
        while (event := reader.next_event()) is not None:
            got.append(event)
    return got


def test_typed_errors_keep_the_connection_open(one_seeder):
    port, fid, content = one_seeder
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        hello, unknown, bad_index, chunk = talk(
            s, wire.Hello(1), wire.GetManifest(b"\x01" * 32), wire.Request(fid, 3), wire.Request(fid, 2)
        )
    assert hello == wire.Hello(1, wire.FLAG_ANNOUNCE)
    assert isinstance(unknown, wire.Error) and unknown.code == wire.ErrorCode.UNKNOWN_FILE
    assert isinstance(bad_index, wire.Error) and bad_index.code == wire.ErrorCode.BAD_INDEX and bad_index.index == 3
    assert isinstance(chunk, wire.Chunk) and bytes(chunk.data) == content[800:]


@pytest.mark.parametrize(
    "opening",
    [
        wire.encode(wire.Request(b"\x01" * 32, 0)),  # no HELLO first
        wire.encode(wire.Hello(99)),  # a protocol version we do not speak
        wire.encode(wire.Hello(1)) + struct.pack("!BI", 2, 0xFFFFFFFF),  # huge length
        wire.encode(wire.Hello(1)) + b"\x63" + bytes(4),  # unknown frame type
    ],
)
def test_bad_frames_get_an_error_then_close_and_others_are_still_served(one_seeder, opening):
    port, fid, content = one_seeder
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(opening)
        reader = wire.FrameReader()
        events = []
        while data := s.recv(65536):  # until the seeder closes
            reader.receive_data(data)
            while (event := reader.next_event()) is not None:
                events.append(event)
    assert isinstance(events[-1], wire.Error)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        _, chunk = talk(s, wire.Hello(1), wire.Request(fid, 0))
    assert bytes(chunk.data) == content[:400]


def test_frame_cut_off_by_eof_closes_only_that_connection(one_seeder):
    port, fid, content = one_seeder
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(wire.encode(wire.Hello(1)) + wire.encode(wire.Request(fid, 0))[:20])
        s.shutdown(socket.SHUT_WR)  # EOF in the middle of a frame
        received = b""
        while data := s.recv(65536):
            received += data
    reader = wire.FrameReader()
    reader.receive_data(received)
    assert reader.next_event() == wire.Hello(1, wire.FLAG_ANNOUNCE) and reader.next_event() is None  # nothing served for half a frame
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        _, chunk = talk(s, wire.Hello(1), wire.Request(fid, 1))
    assert bytes(chunk.data) == content[400:800]


def test_a_flood_of_pipelined_requests_is_bounded_and_others_are_served(tmp_path):
    data = random_file(tmp_path / "seed" / "flood.bin", 4 << 20)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data], "--connection-timeout", "2")
        fds = lambda: len(os.listdir(f"/proc/{seeder.proc.pid}/fd"))  # noqa: E731
        baseline = fds()
        fid = bytes.fromhex(swarm.lookup("flood.bin").file.file_id)
        flood = socket.create_connection(("127.0.0.1", seeder.port), timeout=10)
        flood.setblocking(False)
        request = wire.encode(wire.Request(fid, 7))
        burst = wire.encode(wire.Hello(1)) + request * 500_000  # 20 MB of requests for 260 GB of answers
        sent = 0
        try:
            while sent < len(burst):  # until the seeder stops reading: it answers before it reads on
                sent += flood.send(burst[sent:])
        except BlockingIOError:
            pass
        assert sent < len(burst)
        with socket.create_connection(("127.0.0.1", seeder.port), timeout=10) as other:
            _, chunk = talk(other, wire.Hello(1), wire.Request(fid, 0))
        assert bytes(chunk.data) == data.read_bytes()[: 512 * 1024]
        status = Path(f"/proc/{seeder.proc.pid}/status").read_text()
        rss_mb = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024
        assert rss_mb < 100
        # The flooder never reads: after the connection timeout the seeder drops it (its socket
        # and the file it was sending from), while our end is still open.
        wait_until(lambda: fds() == baseline, timeout=30)
        flood.close()
