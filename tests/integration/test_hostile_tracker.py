"""The tracker tells the truth (issue 12, items 14-20), on a real tracker process and real UDP
sockets: it records only addresses that asked, lets only the registering sender keep or drop
a holder, bounds what one address may register, keeps a file's real name findable, refuses
hostile names, and never answers an unproven address with more bytes than it sent.

Loopback is all of 127.0.0.0/8 on Linux, so a socket bound to 127.0.0.2 is another address."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading

import pytest

from p2p_shared import messages
from p2p_shared.hashing import hash_chunks
from p2p_shared.manifest import Manifest, file_id_of
from tools.localswarm import LocalSwarm, random_file, scrape, service_argv

CONNECT_SIZE = 100  # a connect padded with JSON whitespace, longer than any answer to it


def refused(metrics_port: int, reason: str) -> float:
    return scrape(metrics_port).get(("p2p_tracker_refused_datagrams_total", (("reason", reason),)), 0.0)


class Udp:
    """One UDP socket, bound to `source`, that talks to the tracker in exact datagrams."""

    def __init__(self, tracker_port: int, source: str = "127.0.0.1") -> None:
        self.tracker = ("127.0.0.1", tracker_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(1.0)
        self.conn: int | None = None
        self.txn = 0

    def exchange(self, data: bytes) -> dict:
        """Send until the answer with this datagram's txn comes back; older answers are skipped."""
        txn = json.loads(data)["txn"]
        for _ in range(5):  # datagrams may be lost, even on loopback under load
            self.sock.sendto(data, self.tracker)
            try:
                while (answer := json.loads(self.sock.recv(65536)))["txn"] != txn:
                    pass
            except TimeoutError:
                continue
            return answer
        raise TimeoutError(f"no answer to {data[:80]!r}")

    def connect(self) -> int:
        self.txn += 1
        data = b'{"txn":%d,"type":"connect"}' % self.txn
        return self.exchange(data.ljust(CONNECT_SIZE))["conn"]

    def ask(self, message: messages.Request) -> dict:
        """A request with a connection id for this socket's address, the answer as JSON."""
        if self.conn is None:
            self.conn = self.connect()
        self.txn += 1
        return self.exchange(messages.encode(message.model_copy(update={"conn": self.conn, "txn": self.txn})))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def swarm(tmp_path):
    with LocalSwarm(tmp_path) as s:
        s.start_tracker(metrics=True)
        yield s


def entry(n: int, name: str = "f.bin") -> messages.FileEntry:
    return messages.FileEntry(file_id=f"{n:064x}", name=name, size=1000, chunk_size=1000)


# Item 14: addresses and holders belong to the sender that proved them.


def test_a_host_other_than_the_senders_address_is_refused_and_counted(swarm):
    stranger = Udp(swarm.tracker_port, source="127.0.0.2")
    try:
        for host in ("127.0.0.1", "127.0.0.3"):  # the tracker's own machine, another address
            answer = stranger.ask(messages.Register(port=22, host=host, files=[entry(1, "scan.bin")]))
            assert answer["type"] == "error" and answer["code"] == "forbidden", answer
        assert swarm.lookup("scan.bin").file is None  # no leecher is ever sent to port 22
        assert refused(swarm.tracker.metrics_port, "foreign_host") == 2
        # Its own address is what it may register, named or not (containers, --advertise-host).
        assert stranger.ask(messages.Register(port=7000, host="127.0.0.2", files=[entry(1, "scan.bin")]))["type"] == "ack"
        assert swarm.lookup("scan.bin").peers == [("127.0.0.2", 7000)]
    finally:
        stranger.close()


def test_only_the_registering_address_can_unregister_a_seeder(swarm, tmp_path):
    data = random_file(tmp_path / "seed" / "kept.bin", 1000)
    seeder = swarm.add_seeder([data])
    outsider = Udp(swarm.tracker_port, source="127.0.0.2")
    try:
        for _ in range(20):  # the forged unregister loop, from another address
            answer = outsider.ask(messages.Unregister(port=seeder.port, host="127.0.0.1"))
            assert answer["type"] == "error" and answer["code"] == "forbidden", answer
            assert swarm.lookup("kept.bin").peers == [("127.0.0.1", seeder.port)]
        assert refused(swarm.tracker.metrics_port, "foreign_host") == 20
    finally:
        outsider.close()
    # The seeder itself still may: SIGTERM makes it unregister, and the tracker forgets it.
    seeder.stop()
    assert swarm.lookup("kept.bin").file is None


def test_forged_heartbeats_do_not_keep_a_killed_seeder_alive(tmp_path):
    data = random_file(tmp_path / "seed" / "dead.bin", 1000)
    with LocalSwarm(tmp_path, heartbeat=0.5) as swarm:
        tracker = swarm.start_tracker("--missed-heartbeats", "2", metrics=True)
        seeder = swarm.add_seeder([data])
        seeder.send_signal(signal.SIGKILL)
        seeder.wait()
        forger, done = Udp(swarm.tracker_port, source="127.0.0.2"), threading.Event()
        answers: list[dict] = []

        def forge() -> None:  # beats for the dead seeder, faster than its own interval
            while not done.wait(0.1):
                answers.append(forger.ask(messages.Heartbeat(port=seeder.port, host="127.0.0.1")))

        beating = threading.Thread(target=forge, daemon=True)
        beating.start()
        try:
            expired = tracker.wait_for(lambda e: e.get("event") == "holder expired", timeout=15)
        finally:
            done.set()
            beating.join(5)
            forger.close()
        assert expired["holder"] == f"127.0.0.1:{seeder.port}"
        assert answers and all(a["type"] == "error" and a["code"] == "forbidden" for a in answers)
        assert refused(tracker.metrics_port, "foreign_host") >= len(answers)
        assert swarm.lookup("dead.bin").file is None


# Item 15: one address gets a bounded share of the registry.


def test_one_address_registers_at_most_its_share_of_files_and_the_refusal_is_counted(swarm):
    flood, other = Udp(swarm.tracker_port), Udp(swarm.tracker_port, source="127.0.0.2")
    try:
        acked = 0
        for batch in range(4096 // 16 + 1):  # 16 files a datagram, 1024 a holder
            files = [entry(batch * 16 + i) for i in range(16)]
            answer = flood.ask(messages.Register(port=7000 + batch * 16 // 1024, files=files))
            if answer["type"] != "ack":
                break
            acked += 16
        assert acked == 4096 and answer["code"] == "full", answer
        assert refused(swarm.tracker.metrics_port, "files_per_address") == 1
        assert other.ask(messages.Register(port=7000, files=[entry(99_999)]))["type"] == "ack"  # others still served
    finally:
        flood.close()
        other.close()


# Item 16: the file list comes in pages.


def test_the_file_list_walks_every_file_once_by_cursor(swarm):
    senders = [Udp(swarm.tracker_port, source=f"127.0.0.{n}") for n in (1, 2, 3)]
    try:
        ids = set()
        for n, sender in enumerate(senders):
            files = [entry(1000 * n + i, f"file-{n}-{i}.bin") for i in range(15)]
            assert sender.ask(messages.Register(port=7000, files=files))["type"] == "ack"
            ids |= {f.file_id for f in files}
        seen, after, pages = [], None, 0
        while True:
            page = senders[0].ask(messages.ListFiles(after=after))
            pages += 1
            assert page["v"] == 5 and page["total"] == 45 and len(page["files"]) <= 16
            seen += [f["file_id"] for f in page["files"]]
            after = page.get("next")
            if after is None:
                break
        assert pages == 3 and seen == sorted(ids)
    finally:
        for sender in senders:
            sender.close()


# Item 18: a file id registered first under another name keeps its real name findable.


def test_a_file_registered_first_under_a_decoy_name_is_found_by_its_real_name(swarm, tmp_path):
    data = random_file(tmp_path / "seed" / "real.bin", 300_000)
    size = data.stat().st_size
    file_id = file_id_of(Manifest("real.bin", size, 100_000, hash_chunks(data, size, 100_000)).encode())
    squatter = Udp(swarm.tracker_port, source="127.0.0.2")
    try:
        decoy = messages.FileEntry(file_id=file_id, name="decoy.bin", size=1, chunk_size=1)
        assert squatter.ask(messages.Register(port=7000, files=[decoy]))["type"] == "ack"
        seeder = swarm.add_seeder([data], "--chunk-size", "100000")
        found = swarm.lookup("real.bin")
        assert found.file == messages.FileEntry(file_id=file_id, name="real.bin", size=size, chunk_size=100_000)
        assert sorted(found.peers) == [("127.0.0.1", seeder.port), ("127.0.0.2", 7000)]
        leecher = swarm.leecher("real.bin", tmp_path / "out")
        assert leecher.wait(60) == 0, leecher.output
        assert (tmp_path / "out" / "real.bin").read_bytes() == data.read_bytes()
    finally:
        squatter.close()


# Item 20: names without control or bidi characters; nothing larger than what was sent.


HOSTILE_NAMES = ["del\x7f.bin", "csi\u009b31m.bin", "cod.\u202etxt.exe", "isolate\u2066.bin", "line\u2028.bin"]


def test_names_with_control_or_bidi_override_characters_are_refused(swarm, tmp_path):
    sender = Udp(swarm.tracker_port)
    try:
        conn = sender.connect()
        for n, name in enumerate(HOSTILE_NAMES):  # as \u escapes and as raw UTF-8
            file = {**entry(n).model_dump(), "name": name}
            for ascii_only in (True, False):
                request = {"type": "register", "conn": conn, "port": 7000, "files": [file]}
                sender.sock.sendto(json.dumps(request, ensure_ascii=ascii_only).encode(), sender.tracker)
        assert sender.ask(messages.ListFiles())["files"] == []  # answered in order: every name above was seen
        listed = subprocess.run(
            service_argv("leecher", "--list", "--tracker", swarm.tracker_addr), capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        shown = set(listed.stdout) - {"\n"}
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c in "\u202e\u2066\u2028" for c in shown)
        malformed = scrape(swarm.tracker.metrics_port)[("p2p_tracker_malformed_datagrams_total", (("reason", "invalid"),))]
        assert malformed == 2 * len(HOSTILE_NAMES)
    finally:
        sender.close()


UNPROVEN = [
    b'{"type":"connect"}',
    b'{"type":"list_files"}',
    b'{"type":"lookup","name":"f.bin"}',
    b'{"v":1,"txn":7,"type":"connect"}',
    b'{"v":2,"txn":4294967295,"type":"connect"}',
    b'{"v":9,"txn":1,"type":"connect"}',
    b'{"txn":3,"type":"register","port":7000,"conn":1}',
]


def test_an_unproven_address_never_gets_more_bytes_than_it_sent(swarm):
    prober = Udp(swarm.tracker_port, source="127.0.0.5")
    try:
        for request in UNPROVEN:
            prober.sock.sendto(request, prober.tracker)
            # Answers come in order, so whatever the request got arrives before this one's.
            prober.sock.sendto(b'{"txn":424242,"type":"connect"}'.ljust(CONNECT_SIZE), prober.tracker)
            while True:
                answer = prober.sock.recv(65536)
                if json.loads(answer)["txn"] == 424242:
                    assert len(answer) <= CONNECT_SIZE
                    break
                assert len(answer) <= len(request), (request, answer)
    finally:
        prober.close()
