"""Tracker replicas on a Redis primary that Sentinel watches (`--registry redis+sentinel://...`),
on real processes: a primary, a replica and three sentinels (quorum 2) on loopback. The primary
killed: lookups are answered again within the failover time the sentinels are configured for,
and what the registry lost (writes the replica had not received) comes back at the holders'
next heartbeat. The old primary back: Sentinel makes it a replica of the new one."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from p2p_shared import messages
from tests.host_tools import host_tool
from tools.localswarm import LocalSwarm, RedisServer, SentinelGroup, Service, free_port, random_file, service_argv, tracker_request

from .conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
DOWN_AFTER = 1.0  # seconds a primary may be silent before a sentinel calls it down
# An election and a promotion after that: Sentinel's own figure is a few hundred ms; 5 s is the
# failover timeout the group is configured for, the most one attempt may take.
FAILOVER_TIMEOUT = 5.0


@pytest.fixture
def sentinel_group(tmp_path):
    host_tool("redis-server", "redis-server")
    group = SentinelGroup(tmp_path / "redis", DOWN_AFTER, FAILOVER_TIMEOUT).start()
    try:
        yield group
    finally:
        group.stop()


def answered(swarm: LocalSwarm, replica: int, name: str) -> messages.Reply:
    return tracker_request(("127.0.0.1", swarm.tracker_ports[replica]), messages.Lookup(name=name), timeout=2.0)


def holders(swarm: LocalSwarm, replica: int, name: str) -> int:
    reply = answered(swarm, replica, name)
    return len(reply.peers) if isinstance(reply, messages.Peers) else -1


def role(port: int) -> str:
    info = subprocess.run(["redis-cli", "-p", str(port), "info", "replication"], capture_output=True, text=True, timeout=5)
    return next((line.split(":")[1].strip() for line in info.stdout.splitlines() if line.startswith("role:")), "")


def test_the_primary_killed_lookups_resume_within_the_failover_time_and_holders_are_whole(tmp_path, sentinel_group):
    interval = 1.0
    data = random_file(tmp_path / "seed" / "ha.bin", 1000)
    with LocalSwarm(tmp_path, heartbeat=interval, registry=sentinel_group.url) as swarm:
        for replica in (0, 1):
            swarm.start_tracker("--registry-timeout", "0.3", replica=replica)
        seeders = [swarm.add_seeder([data]) for _ in range(2)]
        assert holders(swarm, 0, "ha.bin") == 2
        primary, replica_server = sentinel_group.servers
        assert sentinel_group.primary_port() == primary.port
        wait_until(lambda: role(replica_server.port) == "slave", timeout=10)

        primary.kill()
        killed = time.monotonic()
        # Answered `unavailable` (or not at all) until a sentinel promotes the replica; then every
        # lookup is answered again, through both tracker replicas.
        wait_until(lambda: sentinel_group.primary_port() == replica_server.port, timeout=DOWN_AFTER + FAILOVER_TIMEOUT + 5)
        promoted = time.monotonic() - killed
        wait_until(lambda: holders(swarm, 0, "ha.bin") >= 0 and holders(swarm, 1, "ha.bin") >= 0, timeout=10)
        resumed = time.monotonic() - killed
        assert promoted <= DOWN_AFTER + FAILOVER_TIMEOUT and resumed <= DOWN_AFTER + FAILOVER_TIMEOUT + 1, (promoted, resumed)
        # What a failover may lose: writes the replica had not received (replication is
        # asynchronous). A holder missing hears `unknown_seeder` at its next beat and registers
        # again, so within one heartbeat interval (and one of slack) both are listed.
        wait_until(lambda: holders(swarm, 0, "ha.bin") == 2, timeout=2 * interval + 1)
        assert role(replica_server.port) == "master"

        # The old primary restarts (empty, on its port): Sentinel turns it into a replica of the
        # new primary, which it copies; the registry is not emptied by its return.
        primary.start()
        wait_until(lambda: role(primary.port) == "slave", timeout=DOWN_AFTER + FAILOVER_TIMEOUT + 10)
        assert sentinel_group.primary_port() == replica_server.port
        for _ in range(3):
            assert holders(swarm, 1, "ha.bin") == 2
            time.sleep(interval)  # across heartbeats: still two, none forgotten and re-registered
        assert all(s.proc.poll() is None for s in [*swarm.trackers, *seeders])
        logs = "".join(s.output for s in [*swarm.trackers, *seeders])
        assert "Traceback" not in logs


def test_every_sentinel_down_is_unavailable_not_a_crash_and_it_recovers(tmp_path, sentinel_group):
    data = random_file(tmp_path / "seed" / "blind.bin", 1000)
    with LocalSwarm(tmp_path, heartbeat=1.0, registry=sentinel_group.url) as swarm:
        tracker = swarm.start_tracker("--registry-timeout", "0.3")
        swarm.add_seeder([data])
        for sentinel in sentinel_group.sentinels:
            sentinel.send_signal(19)  # SIGSTOP: no sentinel answers who the primary is
        try:
            # Connections already open to the primary keep working; a new one cannot be made.
            assert holders(swarm, 0, "blind.bin") in (1, -1)
        finally:
            for sentinel in sentinel_group.sentinels:
                sentinel.send_signal(18)  # SIGCONT
        wait_until(lambda: holders(swarm, 0, "blind.bin") == 1, timeout=10)
        assert tracker.proc.poll() is None and "Traceback" not in tracker.output


@pytest.mark.parametrize(("url", "said"), [
    ("redis+sentinel://127.0.0.1:26379", "the path is /MASTER_NAME or /MASTER_NAME/DB"),
    ("redis+sentinel://127.0.0.1:x/p2p", "a sentinel is HOST:PORT, not '127.0.0.1:x'"),
    ("redis+sentinel://127.0.0.1:26379/p2p/zero", "the path is /MASTER_NAME or /MASTER_NAME/DB"),
])
def test_a_sentinel_url_that_cannot_work_is_one_line_and_exit_2(url, said):
    tracker = Service("tracker", service_argv(
        "tracker", "--host", "127.0.0.1", "--port", str(free_port()), "--metrics-port", "0", "--registry", url,
    ), {"P2P_LOG_FORMAT": "json"})
    assert tracker.wait(30) == 2
    assert said in tracker.output and "Traceback" not in tracker.output


def test_no_sentinel_listening_is_one_line_and_exit_1():
    port = free_port()
    url = f"redis+sentinel://127.0.0.1:{port}/p2p/0"
    tracker = Service("tracker", service_argv(
        "tracker", "--host", "127.0.0.1", "--port", str(free_port()), "--metrics-port", "0", "--registry", url,
    ), {"P2P_LOG_FORMAT": "json"})
    assert tracker.wait(30) == 1
    said = f"cannot use the registry at {url}: registry store unreachable: no sentinel at 127.0.0.1:{port} names a primary for 'p2p'"
    assert said in tracker.output and "Traceback" not in tracker.output
    assert len(tracker.lines) == 1, tracker.output


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-stack.yml"])
def test_the_sentinel_the_deploy_files_start_watches_the_primary(tmp_path, file):
    """Their sentinel's script, run here: its folder moved to tmp_path, its port a free one, its
    primary a redis-server on loopback instead of the `redis` service."""
    host_tool("redis-server", "redis-server")
    primary = RedisServer(tmp_path / "primary").start()
    try:
        script = yaml.safe_load((REPO / file).read_text())["services"]["sentinel"]["command"][0]
        port = free_port()
        script = (script.replace("/tmp", str(tmp_path)).replace("port 26379", f"port {port}")
                  .replace("monitor p2p redis 6379", f"monitor p2p 127.0.0.1 {primary.port}"))
        sentinel = Service("sentinel", ["sh", "-c", script])
        try:
            sentinel.wait_for_text(f"+monitor master p2p 127.0.0.1 {primary.port} quorum 2")
            answer = subprocess.run(["redis-cli", "-p", str(port), "sentinel", "get-master-addr-by-name", "p2p"],
                                    capture_output=True, text=True, timeout=5).stdout.split()
            assert answer == ["127.0.0.1", str(primary.port)]
        finally:
            sentinel.stop()
    finally:
        primary.stop()
