"""Several tracker replicas as one tracker, sharing their registry in a real redis-server, on
real processes: a replica killed mid-download, Redis restarted empty, Redis down, Redis stalled,
a Redis URL that does not work."""

from __future__ import annotations

import signal
import time

from p2p_shared import messages
from tools.localswarm import LocalSwarm, Service, free_port, random_file, scrape, service_argv, sha256_file, tracker_request

from .conftest import wait_until

RATE = "3000000"  # bytes/s per seeder: slow enough that a download can be interrupted midway


def beats(seeder, result: str = "ok") -> float:
    return scrape(seeder.metrics_port).get(("p2p_seeder_heartbeats_total", (("result", result),)), 0.0)


def replicas(swarm: LocalSwarm, count: int = 2, *args: str) -> None:
    for replica in range(count):
        swarm.start_tracker(*args, metrics=True, replica=replica)


def ask(swarm: LocalSwarm, replica: int, message: messages.Request) -> messages.Reply:
    return tracker_request(("127.0.0.1", swarm.tracker_ports[replica]), message)


def test_a_replica_killed_mid_download_the_download_finishes_and_the_other_answers(tmp_path, redis_server):
    interval, missed = 1.0, 3
    data = random_file(tmp_path / "seed" / "replica.bin", 16 << 20)
    with LocalSwarm(tmp_path, heartbeat=interval, registry=redis_server.url) as swarm:
        replicas(swarm, 2, "--missed-heartbeats", str(missed))
        seeders = [swarm.add_seeder([data], "--max-upload-rate", RATE, metrics=True) for _ in range(3)]
        leecher = swarm.leecher("replica.bin", tmp_path / "out", "--min-seeders", "3")
        leecher.wait_for("downloading")
        # Clients pick a replica at random: kill the one most seeders registered through (2 or 3).
        registered = [scrape(t.metrics_port)[("p2p_tracker_registrations_total", (("result", "new"),))] for t in swarm.trackers]
        victim = registered.index(max(registered))
        other = 1 - victim
        swarm.trackers[victim].send_signal(signal.SIGKILL)
        swarm.trackers[victim].wait()
        # Nothing was lost: the other replica lists every seeder at once.
        assert len(swarm.lookup("replica.bin", replica=other).peers) == 3
        # A new leecher, given both replicas, finds all three at once (--wait 1).
        newcomer = swarm.leecher("replica.bin", tmp_path / "new", "--min-seeders", "3", "--wait", "1")
        # Every seeder keeps beating, through the live replica, for longer than a holder lives.
        before = [beats(s) for s in seeders]
        wait_until(lambda: all(beats(s) - b >= missed + 1 for s, b in zip(seeders, before)), timeout=30)
        assert len(swarm.lookup("replica.bin", replica=other).peers) == 3
        assert scrape(swarm.trackers[other].metrics_port)[("p2p_tracker_expirations_total", ())] == 0
        assert leecher.wait(120) == 0, leecher.output
        assert newcomer.wait(120) == 0, newcomer.output
    assert sha256_file(tmp_path / "out" / "replica.bin") == sha256_file(data)
    assert sha256_file(tmp_path / "new" / "replica.bin") == sha256_file(data)


def test_redis_restarted_empty_the_holders_register_again_within_one_heartbeat(tmp_path, redis_server):
    interval = 2.0
    data = random_file(tmp_path / "seed" / "again.bin", 1000)
    with LocalSwarm(tmp_path, heartbeat=interval, registry=redis_server.url) as swarm:
        replicas(swarm, 2)
        seeders = [swarm.add_seeder([data]) for _ in range(2)]
        redis_server.kill()
        redis_server.start()  # the same port, no data
        back = time.monotonic()
        assert swarm.lookup("again.bin", replica=0).file is None  # the registry is gone
        wait_until(lambda: len(swarm.lookup("again.bin", replica=1).peers) == 2, timeout=10)
        # Each seeder's next beat hears `unknown_seeder` and registers again at once; one more
        # interval is slack for a loaded machine.
        assert time.monotonic() - back <= 2 * interval
        for seeder in seeders:
            seeder.wait_for("tracker forgot this holder; registering again", timeout=1)
        assert all(t.proc.poll() is None for t in swarm.trackers)


def test_redis_down_replicas_answer_unavailable_clients_back_off_and_all_recovers(tmp_path, redis_server):
    interval = 1.0
    data = random_file(tmp_path / "seed" / "down.bin", 1000)
    with LocalSwarm(tmp_path, heartbeat=interval, registry=redis_server.url) as swarm:
        replicas(swarm, 2, "--registry-timeout", "0.3")
        seeder = swarm.add_seeder([data], metrics=True)
        redis_server.kill()
        for replica in (0, 1):
            reply = ask(swarm, replica, messages.Lookup(name="down.bin"))
            assert isinstance(reply, messages.ErrorReply) and reply.code == "unavailable", reply
        # The seeder's beats fail on both replicas: counted, retried at its own pace, no crash.
        failed = beats(seeder, "timeout")
        wait_until(lambda: beats(seeder, "timeout") >= failed + 2, timeout=30)
        for tracker in swarm.trackers:
            metrics = scrape(tracker.metrics_port)
            assert metrics[("p2p_tracker_store_errors_total", (("reason", "connection"),))] >= 1
            assert metrics[("p2p_tracker_store_up", ())] == 0
        assert seeder.proc.poll() is None and all(t.proc.poll() is None for t in swarm.trackers)
        redis_server.start()  # back, empty
        wait_until(lambda: len(swarm.lookup("down.bin", replica=0).peers) == 1, timeout=15)
        wait_until(lambda: all(scrape(t.metrics_port)[("p2p_tracker_store_up", ())] == 1 for t in swarm.trackers), timeout=15)
        leecher = swarm.leecher("down.bin", tmp_path / "out", "--wait", "5")
        assert leecher.wait(60) == 0, leecher.output
        assert "Traceback" not in "".join(t.output for t in swarm.trackers) + seeder.output


def test_a_stalled_redis_is_answered_unavailable_within_the_timeout_and_counted(tmp_path, redis_server):
    data = random_file(tmp_path / "seed" / "slow.bin", 1000)
    with LocalSwarm(tmp_path, heartbeat=5.0, registry=redis_server.url) as swarm:
        tracker = swarm.start_tracker("--registry-timeout", "0.3", metrics=True)
        swarm.add_seeder([data])
        redis_server.pause()  # SIGSTOP: connected, and silent
        try:
            started = time.monotonic()
            reply = tracker_request(("127.0.0.1", swarm.tracker_port), messages.Lookup(name="slow.bin"), timeout=2.0)
            took = time.monotonic() - started
        finally:
            redis_server.resume()
        assert isinstance(reply, messages.ErrorReply) and reply.code == "unavailable", reply
        assert 0.3 <= took < 1.5  # the bound, not the stall
        assert scrape(tracker.metrics_port)[("p2p_tracker_store_errors_total", (("reason", "timeout"),))] >= 1
        assert swarm.lookup("slow.bin").peers  # answered again once Redis is


def test_a_redis_url_that_does_not_work_is_one_line_and_a_failed_exit(tmp_path):
    port = free_port()  # nothing listens there
    for url, code, said in (
        (f"redis://127.0.0.1:{port}/0", 1, f"cannot use the registry at redis://127.0.0.1:{port}/0: registry store unreachable"),
        ("http://127.0.0.1:6379", 2, "--registry (P2P_REGISTRY) must be memory or a Redis URL"),
    ):
        tracker = Service("tracker", service_argv(
            "tracker", "--host", "127.0.0.1", "--port", str(free_port()), "--metrics-port", "0", "--registry", url,
        ), {"P2P_LOG_FORMAT": "json"})
        assert tracker.wait(30) == code
        assert said in tracker.output and "Traceback" not in tracker.output
        assert len([line for line in tracker.lines if "warning" not in line]) == 1, tracker.output
