"""What a new user meets first: mistakes reported at once with their cause, the health file the
containers' healthchecks read, and the preflight that sets up `make test`."""

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tools.localswarm import LocalSwarm, Service, free_port, random_file, service_argv, sha256_file

from .conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
# Each case below would take the whole --wait (or every retry) if it were not caught at once:
# a leecher that exits within TOO_LONG of a 600 s wait has not waited.
LONG_WAIT = "600"
TOO_LONG = 60


def ci_requires(available, reason: str):
    """Skip without it; under CI (any true value) a missing requirement fails instead."""
    under_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return pytest.mark.skipif(not available and not under_ci, reason=reason)


def test_a_file_not_on_the_network_is_reported_at_once_with_a_hint(swarm, tmp_path):
    leecher = swarm.leecher("nothing-here.bin", tmp_path, "--wait", LONG_WAIT)
    assert leecher.wait(TOO_LONG) == 1
    assert "nothing-here.bin is not on the network" in leecher.output
    assert "p2p-leecher --list" in leecher.output and "Traceback" not in leecher.output
    assert list(tmp_path.iterdir()) == []


def test_wait_for_file_waits_for_a_file_that_appears_later(swarm, tmp_path):
    data = random_file(tmp_path / "seed" / "later.bin", 300_000)
    leecher = swarm.leecher("later.bin", tmp_path / "out", "--wait", LONG_WAIT, "--wait-for-file")
    leecher.wait_for("waiting for seeders")
    swarm.add_seeder([data])
    assert leecher.wait(TOO_LONG) == 0, leecher.output
    assert sha256_file(tmp_path / "out" / "later.bin") == sha256_file(data)


def test_a_closed_tracker_port_is_reported_at_once(tmp_path):
    port = free_port(socket.SOCK_DGRAM)  # nothing listens there
    with LocalSwarm(tmp_path) as swarm:
        swarm.tracker_port = port
        leecher = swarm.leecher("demo.bin", tmp_path, "--wait", LONG_WAIT)
        assert leecher.wait(TOO_LONG) == 1
    assert f"tracker 127.0.0.1:{port} refused: nothing listens on udp port {port}" in leecher.output
    assert "Traceback" not in leecher.output


@ci_requires(os.geteuid() == 0 and shutil.which("unshare"), "needs root and unshare (a private /etc/resolv.conf)")
def test_a_tracker_name_that_does_not_resolve_is_reported_at_once(tmp_path):
    # The name is resolved against a resolver on loopback where nothing answers, in a private
    # mount namespace: the test sends no query off this machine.
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    argv = service_argv("leecher", "demo.bin", "--tracker", "tracker.example:6969", "-o", str(tmp_path), "--wait", LONG_WAIT)
    shell = f'mount --bind {resolv} /etc/resolv.conf && exec "$@"'
    leecher = Service("leecher", ["unshare", "--mount", "sh", "-c", shell, "sh", *argv], {"P2P_LOG_FORMAT": "json"})
    assert leecher.wait(TOO_LONG) == 1
    assert "cannot resolve the tracker's host 'tracker.example'" in leecher.output
    assert "Traceback" not in leecher.output


def test_health_files_appear_when_serving_and_go_away_on_stop(tmp_path):
    """The tracker's file appears once it listens; a seeder's only once it is registered."""
    data = random_file(tmp_path / "seed" / "h.bin", 1000)
    tracker_health, seeder_health = tmp_path / "tracker.healthy", tmp_path / "seeder.healthy"
    with LocalSwarm(tmp_path) as swarm:
        swarm.tracker_port = free_port(socket.SOCK_DGRAM)  # where the tracker will be, once started
        seeder = Service("seeder", service_argv(
            "seeder", "-f", str(data), "-p", str(free_port()), "--host", "127.0.0.1", "--tracker", swarm.tracker_addr,
            "--metrics-port", "0", "--no-cache", "--health-file", str(seeder_health),
        ), swarm.env)
        swarm.others.append(seeder)
        seeder.wait_for("seeder listening")
        assert not seeder_health.exists()  # serving, but no tracker knows it yet
        swarm.start_tracker("--health-file", str(tracker_health))
        wait_until(tracker_health.exists, timeout=10)
        seeder.wait_for("registered with tracker")
        wait_until(seeder_health.exists, timeout=10)
        seeder.proc.send_signal(signal.SIGTERM)
        assert seeder.wait(30) == 0
        assert not seeder_health.exists()
        swarm.tracker.proc.send_signal(signal.SIGTERM)
        assert swarm.tracker.wait(30) == 0
    assert not tracker_health.exists()


def test_a_seeding_leechers_health_file_is_fresh_while_it_runs_and_gone_when_it_ends(tmp_path):
    data = random_file(tmp_path / "seed" / "h.bin", 1000)
    health = tmp_path / "leecher.healthy"
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        swarm.add_seeder([data])
        leecher = swarm.leecher("h.bin", tmp_path / "out", "--seed-time", "-1", "--health-file", str(health))
        leecher.wait_for("seeding")
        wait_until(health.exists, timeout=10)  # a probe can tell a live peer from a stuck one
        leecher.send_signal(signal.SIGTERM)
        assert leecher.wait(30) == 0
    assert not health.exists()


def _preflight(purpose: str, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # an engine that is not there
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [str(REPO / "deploy" / "preflight.sh"), purpose], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_preflight_fails_under_ci_when_docker_cannot_run(ci):
    result = _preflight("test", ci)
    assert result.returncode == 1
    assert "preflight: error: no Docker engine answers" in result.stderr
    assert "check DOCKER_HOST" in result.stderr


def test_preflight_says_what_will_be_skipped_elsewhere_and_make_up_needs_docker():
    relaxed = _preflight("test", None)
    assert relaxed.returncode == 0, relaxed.stderr
    assert "preflight: skipping what needs it: no Docker engine answers" in relaxed.stdout
    assert "preflight: promtool:" in relaxed.stdout  # found (or installed) on the way
    up = _preflight("up", None)
    assert up.returncode == 1 and "preflight: error: no Docker engine answers" in up.stderr
