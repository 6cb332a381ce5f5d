"""Our services on shaped hosts: network namespaces on one bridge, each link capped with tc.

Needs root and iproute2: elsewhere these tests skip with the reason; under CI they fail instead.
A few MiB on links of a few Mbit/s, so each download takes seconds and the links, not the CPU,
set its pace; times are compared as ratios within one test, never to a fixed figure.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.net.runner import Swarm
from bench.net.testbed import Link, Testbed, NamespaceError, unavailable_reason
from .conftest import wait_until
from tools.localswarm import random_file, sha256_file

MiB = 1 << 20
U = 8e6  # bit/s: each seeder's uplink
SEEDER, LEECHER = Link(U, U), Link(U, 5 * U)
F = 4 * MiB
REPO = Path(__file__).resolve().parents[2]


def require_namespaces():
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"network namespace tests cannot run under CI: {reason}", pytrace=False)
        pytest.skip(f"network namespace tests skipped: {reason}")


@pytest.fixture
def bed():
    require_namespaces()
    testbed = Testbed()
    try:
        testbed.__enter__()
    except NamespaceError as exc:  # leftovers of an interrupted run, say: one line, not a traceback
        pytest.fail(str(exc), pytrace=False)
    try:
        yield testbed
    finally:
        testbed.close()


@pytest.fixture
def source(tmp_path):
    return random_file(tmp_path / "payload.bin", F)


def seeded(bed, swarm, source, count):
    hosts = [bed.add_host(f"s{i}", SEEDER) for i in range(1, count + 1)]
    # 128 KiB chunks: 32 of them, so the endgame's duplicate requests stay a small part of the file.
    services = [swarm.seeder(h, source, "--chunk-size", str(128 * 1024), wait=False) for h in hosts]
    for s in services:
        s.wait_for("registered with tracker", timeout=60)
    return hosts, services


def download(swarm, host, source, min_seeders, *args):
    """A leecher from start to exit: seconds, and whether its copy is exact."""
    started = time.monotonic()
    leecher = swarm.leecher(host, source.name, min_seeders, *args)
    assert leecher.wait(60) == 0, leecher.output
    return time.monotonic() - started, sha256_file(swarm.output(host) / source.name) == sha256_file(source)


def test_three_seeders_capped_at_u_beat_one_seeder_alone(bed, source):
    swarm = Swarm(bed, heartbeat=1)
    seeders, _ = seeded(bed, swarm, source, 3)
    alone, together = bed.add_host("l1", LEECHER), bed.add_host("l2", LEECHER)

    one_seconds, one_exact = download(swarm, alone, source, 3, "--max-peers", "1")
    sent_before = [bed.tx_bytes(s) for s in seeders]
    three_seconds, three_exact = download(swarm, together, source, 3)
    sent = [bed.tx_bytes(s) - b for s, b in zip(seeders, sent_before)]

    assert one_exact and three_exact
    # F/3U against F/U: a third, plus process start-up; 0.65 leaves a wide margin.
    assert three_seconds / one_seconds < 0.65, (three_seconds, one_seconds)
    assert all(n > F / 6 for n in sent), sent  # every seeder carried a share


def test_seeder_cut_off_mid_download_the_others_carry_on_and_it_serves_again_once_healed(bed, source):
    swarm = Swarm(bed, heartbeat=1)
    (cut, *others), _ = seeded(bed, swarm, source, 3)
    first, second = bed.add_host("l1", LEECHER), bed.add_host("l2", LEECHER)

    received = bed.rx_bytes(first)
    leecher = swarm.leecher(first, source.name, 3)
    wait_until(lambda: bed.rx_bytes(first) - received > F / 3, timeout=30)
    bed.cut(cut)
    sent_while_cut = bed.tx_bytes(cut)
    assert leecher.wait(60) == 0, leecher.output
    assert sha256_file(swarm.output(first) / source.name) == sha256_file(source)
    assert bed.tx_bytes(cut) - sent_while_cut < 512 * 1024  # at most what was already queued

    bed.heal(cut)
    sent_before = bed.tx_bytes(cut)
    _, exact = download(swarm, second, source, 3)
    assert exact
    assert bed.tx_bytes(cut) - sent_before > F / 6  # reachable and registered again: it served its share


def test_partitioned_tracker_downloads_in_flight_finish_new_ones_start_once_healed(bed, source):
    swarm = Swarm(bed, heartbeat=1)
    seeded(bed, swarm, source, 2)
    first, second = bed.add_host("l1", LEECHER), bed.add_host("l2", LEECHER)

    in_flight = swarm.leecher(first, source.name, 2)
    in_flight.wait_for("downloading", timeout=30)
    bed.cut(swarm.tracker)
    assert in_flight.wait(60) == 0, in_flight.output  # the seeders need no tracker once found
    assert sha256_file(swarm.output(first) / source.name) == sha256_file(source)

    late = swarm.leecher(second, source.name, 2, "--wait", "40", "--wait-for-file")
    time.sleep(2)  # the partition lasts two seconds: the new leecher cannot find anyone meanwhile
    assert late.proc.poll() is None and not (swarm.output(second) / source.name).exists(), late.output
    bed.heal(swarm.tracker)
    assert late.wait(60) == 0, late.output
    assert sha256_file(swarm.output(second) / source.name) == sha256_file(source)


@pytest.mark.parametrize("ci", ["true", None])
def test_without_root_these_tests_skip_with_the_reason_and_fail_under_ci(ci):
    require_namespaces()  # root is needed to drop to an unprivileged user
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "pytest",
         "-p", "no:cacheprovider", "-q", "-rs", f"{__file__}::test_three_seeders_capped_at_u_beat_one_seeder_alone"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    if ci:
        assert result.returncode != 0 and "cannot run under CI: network namespaces need root" in result.stdout
    else:
        assert result.returncode == 0 and "skipped: network namespaces need root" in result.stdout, result.stdout


def test_a_peers_gateway_refuses_other_hosts_unless_their_network_is_allowed(bed):
    swarm = Swarm(bed)
    host, other = bed.add_host("p1", LEECHER), bed.add_host("c1", LEECHER)

    def status(where, url: str) -> str:
        return bed._in(where.ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url).stdout

    swarm.peer(host, "--http-host", "0.0.0.0")  # listening on every address, admitting loopback only
    assert status(other, f"http://{host.ip}:7080/files") == "403"  # another host: refused
    assert status(host, "http://127.0.0.1:7080/files") == "200"  # the host itself
    swarm.peer(host, "--http-host", "0.0.0.0", "--http-allow", "198.18.0.0/15", "-p", "7002",
               "--cache-dir", str(bed.workdir / "second-peer"), http_port=7081)
    assert status(other, f"http://{host.ip}:7081/files") == "200"  # its network admitted
