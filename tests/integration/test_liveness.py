"""The leecher always finishes: the exact file, or exit 1 with one clear line, within `--wait`
seconds of its last progress, whatever its holders do (die, hold nothing, trickle, break the
protocol). Issue 12, items 1 to 4."""

import signal
import time

import pytest

from tools.localswarm import LocalSwarm, random_file

from .conftest import chunks_served, events_named, wait_until
from .hostile import HostilePeer

WAIT = 6  # above the 5 s ceiling of the reconnect backoff: reconnects alone must not keep it alive


def gave_up(leecher, within: float) -> dict:
    """The leecher's last event, once it has exited 1 in time with one error line and no trace."""
    started = time.monotonic()
    assert leecher.wait(within) == 1, leecher.output
    assert time.monotonic() - started < within
    errors = [e for e in leecher.events() if e.get("level") == "error"]
    assert len(errors) == 1 and errors[0] == leecher.events()[-1], leecher.output
    assert "Traceback" not in leecher.output
    return errors[0]


def test_every_seeder_sigkilled_the_leecher_gives_up_within_wait_of_the_last_chunk(tmp_path):
    data = random_file(tmp_path / "seed" / "f.bin", 16 << 20)
    # Long heartbeats: the tracker goes on listing the dead seeders for the whole test.
    with LocalSwarm(tmp_path, heartbeat=60) as swarm:
        swarm.start_tracker()
        seeders = [swarm.add_seeder([data], "--max-upload-rate", "2000000", metrics=True) for _ in range(2)]
        leecher = swarm.leecher("f.bin", tmp_path / "out", "--min-seeders", "2", "--wait", str(WAIT), "--no-share")
        wait_until(lambda: sum(chunks_served(s.metrics_port) for s in seeders) >= 2)
        for seeder in seeders:
            seeder.send_signal(signal.SIGKILL)
        last = gave_up(leecher, WAIT + 20)
    assert last["event"].startswith(f"no progress on f.bin for {WAIT}s: no holder reachable"), last
    assert "connect" in last["event"]  # the last failure, in its own words
    assert not (tmp_path / "out" / "f.bin").exists()
    assert (tmp_path / "out" / "f.bin.part").exists()


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        ("empty-have", ": the 1 connected peers hold none of the 16 chunks missing;"),
        ("trickle", "sent nothing for 2s"),  # the chunk timeout; connected again or not, by then
        ("wrong-index", ": no holder reachable (last: 127.0.0.1:"),
        ("other-file", ": no holder reachable (last: 127.0.0.1:"),
        ("bad-have", ": no holder reachable (last: 127.0.0.1:"),
    ],
)
def test_a_useless_only_holder_ends_the_download_with_one_clear_line(tmp_path, behaviour, why):
    chunk = 64 << 10
    data = random_file(tmp_path / "seed" / "f.bin", 16 * chunk)
    with HostilePeer(data, chunk, behaviour) as liar, LocalSwarm(tmp_path, heartbeat=60) as swarm:
        swarm.start_tracker()
        liar.register(swarm.tracker_port)
        leecher = swarm.leecher("f.bin", tmp_path / "out", "--wait", str(WAIT), "--chunk-timeout", "2", "--no-share")
        last = gave_up(leecher, WAIT + 20)
    assert last["event"].startswith(f"no progress on f.bin for {WAIT}s"), last
    assert why in last["event"], last
    assert not (tmp_path / "out" / "f.bin").exists()
    if behaviour in ("wrong-index", "other-file", "bad-have"):  # a protocol violation: dropped, not retried
        assert [e["peer"] for e in events_named(leecher, "peer dropped")] == [f"127.0.0.1:{liar.port}"], leecher.output
