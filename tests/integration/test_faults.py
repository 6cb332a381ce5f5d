"""Faults on real processes: seeders dying or lying, the tracker restarting."""

import signal
import time

from tools.localswarm import LocalSwarm, random_file, sha256_file

from .conftest import chunks_served, scrape, wait_until
from .hostile import HostilePeer

RATE = "3000000"  # bytes/s per seeder: slow enough that a download can be interrupted midway


def test_seeder_killed_mid_download_file_still_exact(tmp_path):
    data = random_file(tmp_path / "seed" / "kill.bin", 16 << 20)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        victim = swarm.add_seeder([data], "--max-upload-rate", RATE, metrics=True)
        victim_metrics = victim.metrics_port
        for _ in range(2):
            swarm.add_seeder([data], "--max-upload-rate", RATE)
        leecher = swarm.leecher("kill.bin", tmp_path / "out", "--min-seeders", "3")
        wait_until(lambda: chunks_served(victim_metrics) >= 1)
        victim.send_signal(signal.SIGKILL)
        assert leecher.wait(120) == 0, leecher.output
    assert sha256_file(tmp_path / "out" / "kill.bin") == sha256_file(data)
    failures = [e for e in leecher.events() if e.get("event") == "peer failed"]
    assert any(f"127.0.0.1:{victim.port}" == e["peer"] for e in failures), leecher.output


def test_every_seeder_gone_clear_error_nothing_at_final_path(tmp_path):
    data = random_file(tmp_path / "seed" / "gone.bin", 16 << 20)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeders = [swarm.add_seeder([data], "--max-upload-rate", RATE, metrics=True) for _ in range(3)]
        ports = [s.metrics_port for s in seeders]
        leecher = swarm.leecher("gone.bin", tmp_path / "out", "--min-seeders", "3", "--wait", "2")
        wait_until(lambda: sum(chunks_served(p) for p in ports) >= 3)
        for seeder in seeders:
            seeder.send_signal(signal.SIGKILL)
        assert leecher.wait(60) == 1
    last = leecher.events()[-1]
    assert last["level"] == "error"
    assert last["event"].startswith("no progress on gone.bin for 2s: no holder reachable")
    assert "Traceback" not in leecher.output
    assert not (tmp_path / "out" / "gone.bin").exists()
    assert (tmp_path / "out" / "gone.bin.part").exists()  # progress kept for a later run


def test_lying_seeder_is_caught_and_dropped(tmp_path, pushgateway):
    chunk = 64 << 10
    data = random_file(tmp_path / "seed" / "truth.bin", 4 << 20)
    liar = HostilePeer(data, chunk, "corrupt")
    try:
        with LocalSwarm(tmp_path, heartbeat=10) as swarm:
            swarm.start_tracker()
            for _ in range(2):
                swarm.add_seeder([data], "--chunk-size", str(chunk))
            liar.register(swarm.tracker_port)
            leecher = swarm.leecher(
                "truth.bin", tmp_path / "out", "--min-seeders", "3", "--max-bad-chunks", "3",
                "--pushgateway", pushgateway.url,
            )
            assert leecher.wait(60) == 0, leecher.output
    finally:
        liar.close()
    assert sha256_file(tmp_path / "out" / "truth.bin") == sha256_file(data)
    events = leecher.events()
    bad = [e for e in events if e.get("event") == "chunk failed verification"]
    dropped = [e for e in events if e.get("event") == "peer dropped"]
    assert liar.requests >= 3 and len(bad) >= 3
    assert {e["peer"] for e in bad} == {f"127.0.0.1:{liar.port}"}
    assert [e["peer"] for e in dropped] == [f"127.0.0.1:{liar.port}"]
    # Counted: each failed chunk once, put back for another seeder, and the liar dropped.
    pushed = pushgateway.samples()
    assert pushed[("p2p_leecher_hash_failures_total", ())] == len(bad)
    assert pushed[("p2p_leecher_retries_total", (("reason", "hash_mismatch"),))] == len(bad)
    assert pushed[("p2p_leecher_peers_dropped_total", (("reason", "bad_data"),))] == 1


def test_tracker_restart_seeders_reappear_and_download_continues(tmp_path):
    interval = 2.0
    # A beat lost while the tracker was down is retried with backoff inside its interval, so
    # where the restart lands in the cycle moves the re-registration by up to half an interval.
    bound = 1.5 * interval
    data = random_file(tmp_path / "seed" / "restart.bin", 16 << 20)
    with LocalSwarm(tmp_path, heartbeat=interval) as swarm:
        swarm.start_tracker()
        for _ in range(3):
            swarm.add_seeder([data], "--max-upload-rate", RATE)
        leecher = swarm.leecher("restart.bin", tmp_path / "out", "--min-seeders", "3")
        leecher.wait_for("downloading")
        swarm.tracker.send_signal(signal.SIGKILL)
        swarm.tracker.wait()
        swarm.start_tracker()
        back = time.monotonic()
        # A new leecher started right away waits at most that bound for the seeders.
        newcomer = swarm.leecher(
            "restart.bin", tmp_path / "new", "--min-seeders", "3", "--wait", str(bound), "--wait-for-file"
        )
        wait_until(lambda: len(swarm.lookup("restart.bin").peers) == 3, timeout=10)
        assert time.monotonic() - back <= bound
        assert leecher.wait(120) == 0, leecher.output
        assert newcomer.wait(120) == 0, newcomer.output
    assert sha256_file(tmp_path / "out" / "restart.bin") == sha256_file(data)
    assert sha256_file(tmp_path / "new" / "restart.bin") == sha256_file(data)


def test_silent_seeder_expires_after_the_missed_heartbeats_and_is_counted(tmp_path):
    interval, missed = 1.0, 2
    data = random_file(tmp_path / "seed" / "expire.bin", 1000)
    with LocalSwarm(tmp_path, heartbeat=interval) as swarm:
        tracker = swarm.start_tracker("--missed-heartbeats", str(missed), metrics=True)
        silent, alive = (swarm.add_seeder([data]) for _ in range(2))
        assert {port for _, port in swarm.lookup("expire.bin").peers} == {silent.port, alive.port}
        silent.send_signal(signal.SIGKILL)  # no goodbye: only expiry can remove it
        killed = time.monotonic()
        wait_until(lambda: [port for _, port in swarm.lookup("expire.bin").peers] == [alive.port], timeout=10 * interval)
        gone_after = time.monotonic() - killed
        # Its last beat was at most one interval before the kill, the tracker sweeps once an
        # interval, and one more interval is slack for a loaded machine.
        assert (missed - 1) * interval - 0.2 <= gone_after <= (missed + 2) * interval
        metrics = scrape(tracker.metrics_port)
        assert metrics[("p2p_tracker_expirations_total", ())] == 1
        assert metrics[("p2p_tracker_live_holders", (("kind", "complete"),))] == 1
        # The seeder that keeps beating outlives many ttls.
        time.sleep(missed * interval + interval)
        assert [port for _, port in swarm.lookup("expire.bin").peers] == [alive.port]
