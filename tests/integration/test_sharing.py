"""Leechers share: every peer serves the chunks it has verified, on real processes.

Also what a partial holder may do wrong: claim chunks it does not have, send bad bytes or absurd
announcements, read nothing of what it asked for, or die while others fetch from it."""

import signal
import socket

import pytest

from p2p_shared import wire
from tools.localswarm import LocalSwarm, free_port, random_file, sha256_file

from .conftest import events_named, scrape, wait_until
from .hostile import HostilePeer

MIB = 1 << 20


def served(metrics_port: int, role: str = "leecher") -> tuple[float, float]:
    """(chunks, bytes) a process has served to peers so far."""
    try:
        metrics = scrape(metrics_port)
    except OSError:
        return 0.0, 0.0
    return metrics[(f"p2p_{role}_chunks_served_total", ())], metrics[(f"p2p_{role}_bytes_served_total", ())]


def received(metrics_port: int) -> float:
    try:
        return scrape(metrics_port)[("p2p_leecher_chunks_received_total", ())]
    except OSError:
        return 0.0


def summary(leecher) -> dict:
    return events_named(leecher, "summary")[0]


def sharing_leecher_under_way(swarm: LocalSwarm, data, out, upload_rate: str):
    """A tracker, a seeder paced at `upload_rate` bytes/s, and a sharing leecher that has verified
    two chunks: (the leecher, its peer port, its metrics port)."""
    swarm.start_tracker()
    swarm.add_seeder([data], "--max-upload-rate", upload_rate)
    metrics_port = free_port()
    leecher = swarm.leecher(data.name, out, "--metrics-port", str(metrics_port))
    port = leecher.wait_for("sharing")["port"]
    wait_until(lambda: received(metrics_port) >= 2)
    return leecher, port, metrics_port


def test_a_finished_leecher_seeds_until_told_to_stop_and_says_success_first(tmp_path):
    data = random_file(tmp_path / "seed" / "f.bin", 4 * MIB)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data])
        metrics_port = free_port()
        first = swarm.leecher("f.bin", tmp_path / "a", "--seed-time", "-1", "--metrics-port", str(metrics_port))
        port = first.wait_for("sharing")["port"]
        first.wait_for("seeding")
        # The success line and the final file come when the file is verified, not when seeding ends.
        assert first.proc.poll() is None
        assert events_named(first, "Successfully downloaded f.bin")
        assert sha256_file(tmp_path / "a" / "f.bin") == sha256_file(data)
        wait_until(lambda: port in [p for _, p in swarm.lookup("f.bin").peers])  # now a complete holder

        seeder.stop()  # the origin leaves: the finished leecher is the only holder
        wait_until(lambda: seeder.port not in [p for _, p in swarm.lookup("f.bin").peers])
        second = swarm.leecher("f.bin", tmp_path / "b", "--no-share")
        assert second.wait(60) == 0, second.output
        assert sha256_file(tmp_path / "b" / "f.bin") == sha256_file(data)
        assert served(metrics_port)[1] == data.stat().st_size

        first.send_signal(signal.SIGTERM)
        assert first.wait(15) == 0, first.output
        assert swarm.lookup("f.bin").peers == []  # it unregistered on its way out


def test_three_leechers_at_once_the_seeder_sends_each_chunk_about_once(tmp_path):
    size = 8 * MIB
    data = random_file(tmp_path / "seed" / "f.bin", size)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data], "--max-upload-rate", "4000000", metrics=True)
        leechers = [swarm.leecher("f.bin", tmp_path / f"out{i}") for i in range(3)]
        for leecher in leechers:
            assert leecher.wait(120) == 0, leecher.output
            # (a worker that failed is replaced, and the download may still finish: its error is the sign)
            assert not [e for e in leecher.events() if e.get("level") == "error"], leecher.output
        for i in range(3):
            assert sha256_file(tmp_path / f"out{i}" / "f.bin") == sha256_file(data)
        egress = served(seeder.metrics_port, "seeder")[1]
    # Without sharing the seeder sends the file three times; here the leechers pass chunks on.
    assert egress <= 1.5 * size, egress / size
    from_peers = sum(summary(lc)["fetched_bytes"] - summary(lc)["from_seeders_bytes"] for lc in leechers)
    assert from_peers >= size, from_peers / size


def test_a_resumed_part_is_verified_again_before_any_chunk_of_it_is_served(tmp_path):
    chunk = 64 << 10
    data = random_file(tmp_path / "seed" / "f.bin", 16 * chunk)
    damaged = bytearray(data.read_bytes()[: 8 * chunk]) + bytes(8 * chunk)
    damaged[3 * chunk + 5] ^= 0xFF  # chunk 3 rotted on disk; chunks 8-15 were never written
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.bin.part").write_bytes(damaged)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        swarm.add_seeder([data], "--chunk-size", str(chunk), "--max-upload-rate", "300000")
        first = swarm.leecher("f.bin", tmp_path / "a")
        assert first.wait_for("sharing")["verified_chunks"] == 7
        second = swarm.leecher("f.bin", tmp_path / "b", "--no-share")
        assert first.wait(60) == 0, first.output
        assert second.wait(60) == 0, second.output
    for out in ("a", "b"):
        assert sha256_file(tmp_path / out / "f.bin") == sha256_file(data)
    assert not events_named(second, "chunk failed verification"), second.output
    got = summary(second)
    assert got["fetched_bytes"] - got["from_seeders_bytes"] > 0  # some came from the resumed leecher


@pytest.mark.parametrize("behaviour", ["phantom", "corrupt", "absurd-announce"])
def test_a_hostile_partial_holder_is_dropped_and_the_chunks_come_from_elsewhere(tmp_path, behaviour):
    chunk = 64 << 10
    data = random_file(tmp_path / "seed" / "f.bin", 32 * chunk)
    with HostilePeer(data, chunk, behaviour) as liar, LocalSwarm(tmp_path, heartbeat=10) as swarm:
        swarm.start_tracker()
        swarm.add_seeder([data], "--chunk-size", str(chunk), "--max-upload-rate", "2000000")
        liar.register(swarm.tracker_port, partial=True)
        leecher = swarm.leecher("f.bin", tmp_path / "out", "--max-bad-chunks", "2", "--no-share")
        assert leecher.wait(60) == 0, leecher.output
    assert sha256_file(tmp_path / "out" / "f.bin") == sha256_file(data)
    assert [e["peer"] for e in events_named(leecher, "peer dropped")] == [f"127.0.0.1:{liar.port}"], leecher.output
    assert "Traceback" not in leecher.output
    if behaviour != "absurd-announce":
        assert liar.requests >= 2  # it was asked (partial holders come first), refused or lied, and lost


def stuck_downloader(port: int, file_id: str, num_chunks: int) -> socket.socket:
    """A downloader that asks a leecher for every chunk it holds, many times, and reads nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw_id = bytes.fromhex(file_id)
    sock.sendall(wire.encode(wire.Hello(1)) + wire.encode(wire.GetHave(raw_id)))
    frames = wire.FrameReader(max_payload=0)
    have = None
    while have is None:
        frames.receive_data(sock.recv(65536))
        while (event := frames.next_event()) is not None:
            if isinstance(event, wire.Have):
                have = event
    held = [i for i in range(num_chunks) if have.has(i)]
    assert held, "the leecher held nothing yet"
    sock.sendall(b"".join(wire.encode(wire.Request(raw_id, i)) for i in held * 4)[: 64 << 10])
    return sock


def test_a_downloader_that_reads_nothing_does_not_hold_back_the_leechers_own_download(tmp_path):
    data = random_file(tmp_path / "seed" / "f.bin", 16 * MIB)
    with LocalSwarm(tmp_path) as swarm:
        leecher, port, metrics_port = sharing_leecher_under_way(swarm, data, tmp_path / "out", "4000000")
        file_id = swarm.lookup("f.bin").file.file_id
        stuck = stuck_downloader(port, file_id, 32)
        try:
            wait_until(lambda: served(metrics_port)[0] >= 1)  # its requests are being answered
            assert leecher.wait(60) == 0, leecher.output  # and the download and the exit go on
        finally:
            stuck.close()
    assert sha256_file(tmp_path / "out" / "f.bin") == sha256_file(data)


def test_a_leecher_killed_while_serving_leaves_a_resumable_part_and_its_peers_carry_on(tmp_path):
    data = random_file(tmp_path / "seed" / "f.bin", 16 * MIB)
    with LocalSwarm(tmp_path) as swarm:
        victim, _, metrics_port = sharing_leecher_under_way(swarm, data, tmp_path / "a", "2000000")
        other = swarm.leecher("f.bin", tmp_path / "b")
        wait_until(lambda: served(metrics_port)[0] >= 1)  # the other leecher fetches from it
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert other.wait(90) == 0, other.output
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["f.bin.part"]  # nothing else left

        again = swarm.leecher("f.bin", tmp_path / "a")
        assert again.wait(90) == 0, again.output
    assert sha256_file(tmp_path / "b" / "f.bin") == sha256_file(data)
    assert sha256_file(tmp_path / "a" / "f.bin") == sha256_file(data)
    assert events_named(again, "resuming")[0]["verified_chunks"] >= 2
