"""The chaos soak in `make test`: two minutes on shaped hosts with a fixed seed (every kind of fault
at least once), then the checker, which must find every property held. `make chaos` runs the
same for as long as asked (CHAOS_MINUTES), with any seed.

Needs root, iproute2, redis-server, mkfs.ext4 and libfaketime: elsewhere it skips with the
reason; under CI it fails instead (as the other namespace tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.checker import check, needed_from_origin
from bench.chaos.nemesis import KINDS, clock_fault_available
from bench.net.testbed import unavailable_reason
from tests.host_tools import host_tool, under_ci

REPO = Path(__file__).resolve().parents[2]
SEED = 22
MINUTES = 2


def require_soak_tools() -> None:
    reason = unavailable_reason() or clock_fault_available()
    if reason:
        if under_ci():
            pytest.fail(f"the chaos soak cannot run under CI: {reason}", pytrace=False)
        pytest.skip(f"the chaos soak skipped: {reason}")
    host_tool("redis-server", "redis-server")
    host_tool("mkfs.ext4", "e2fsprogs")


@pytest.mark.timeout(900)
def test_a_two_minute_soak_with_every_kind_of_fault_passes_the_checker(tmp_path):
    require_soak_tools()
    out = tmp_path / "soak"
    soak = subprocess.Popen(
        [sys.executable, "-m", "bench.chaos", "--minutes", str(MINUTES), "--seed", str(SEED), "--large-mib", "32",
         "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = soak.communicate(timeout=840)
    finally:
        if soak.poll() is None:  # torn down through its own `finally` (namespaces, mounts)
            soak.send_signal(signal.SIGTERM)
            soak.wait(60)
    lines = output.strip().splitlines()
    assert lines and lines[-1].startswith("VERDICT: PASS"), output[-6000:]
    assert soak.returncode == 0
    faults = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if '"type": "fault"' in line]
    assert {f["kind"] for f in faults} == set(KINDS), sorted({f["kind"] for f in faults})
    assert all(f["started"] is not None and f["ended"] is not None for f in faults)
    assert (out / "timeline.png").stat().st_size > 10_000
    # The verdict is the checker's, again from the folder alone.
    ok, again = check(out)
    assert ok and again[-1] == lines[-1]


def test_the_checker_finds_each_property_broken(tmp_path):
    """The checker on a made-up run: each property broken once, each verdict line says so."""
    (tmp_path / "logs").mkdir()
    size = 1 << 20
    (tmp_path / "catalogue.json").write_text(json.dumps({"a.bin": {"size": size, "sha256": "aa"}}))
    records = [
        {"type": "run", "seed": 1, "minutes": 1, "hosts": {"p1": "198.18.0.1", "t1": "198.18.0.2"}, "wall_start": 1000.0},
        {"type": "exit", "t": 50.0, "proc": "t1", "code": 1},
        {"type": "fault", "kind": "kill", "target": "p1", "at": 10, "duration": 5, "started": 10, "ended": 15, "detail": {}},
        # wrong bytes; and an attempt failed at 40 s, long after the fault
        {"type": "download", "id": 0, "host": "p1", "name": "a.bin", "drop_first": True, "started": 38, "ended": 45, "status": "ok",
         "sha256": "bb", "attempts": [{"start": 38, "end": 40, "error": "curl: (7) Failed to connect"}, {"start": 42, "end": 45}]},
        # finished 100 s after its fault ended: over the bound (45 s + 0.5 s)
        {"type": "download", "id": 1, "host": "p1", "name": "a.bin", "drop_first": False, "started": 12, "ended": 115, "status": "ok",
         "sha256": "aa", "attempts": [{"start": 12, "end": 115}]},
        *({"type": "sample", "t": t, "proc": "p1", "pid": 5, "rss": (100 << 20) * (1 + t // 20), "fds": 10 + t, "state": "S"}
          for t in range(0, 120, 5)),
        {"type": "egress", "seeders_tx": {"s1": 10 * size}, "peers_rx": {"p1": 2 * size}},
    ]
    (tmp_path / "history.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "logs" / "p1.log").write_text('{"event": "peer listening", "level": "info"}\nTraceback (most recent call last):\n'
                                              '{"event": "something nobody wrote down", "level": "error"}\n')
    # the registry unavailable 100 s into the run, and a sweep later, with no Redis fault at all
    (tmp_path / "logs" / "t1.log").write_text(''.join(
        f'{{"event": "registry store unavailable", "level": "warning", "timestamp": "1970-01-01T00:18:{s}Z"}}\n' for s in (20, 22)
    ))
    ok, lines = check(tmp_path)
    assert not ok and lines[-1] == "VERDICT: FAIL (0 of 6 properties held)"
    verdicts = {line.split(":")[0]: line for line in lines}
    assert "download 0 (a.bin at p1)" in verdicts["FAIL exact"]
    assert "an attempt failed with no fault on" in verdicts["FAIL completion"]
    assert "took 100.0 s after its last fault, over its bound of 46 s" in verdicts["FAIL completion"]
    assert "p1 (pid 5) RSS" in verdicts["FAIL resources"] and "descriptors" in verdicts["FAIL resources"]
    assert "p1.log:2: a traceback" in verdicts["FAIL logs"] and "undocumented error line" in verdicts["FAIL logs"]
    assert "t1 exited unasked (code 1) at 50.0 s" in verdicts["FAIL logs"]
    assert "not resumed: t1 at 100.0 s" in verdicts["FAIL registry"]
    assert "5.00x the 2 MiB the workload needed from it" in verdicts["FAIL egress"]  # two downloads, no other holder


@pytest.mark.parametrize("ci", ["true", None])
def test_without_root_the_soak_skips_with_the_reason_and_fails_under_ci(ci):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "pytest",
         "-p", "no:cacheprovider", "-q", "-rs",
         f"{__file__}::test_a_two_minute_soak_with_every_kind_of_fault_passes_the_checker"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    if ci:
        assert result.returncode != 0 and "cannot run under CI: network namespaces need root" in result.stdout, result.stdout
    else:
        assert result.returncode == 0 and "skipped: network namespaces need root" in result.stdout, result.stdout


def test_what_only_the_origin_could_send_counts_what_the_caches_let_go():
    catalogue = {"a.bin": {"size": 100}}
    first = {"host": "p1", "name": "a.bin", "started": 0.0, "ended": 10.0, "status": "ok", "drop_first": True}
    second = {"host": "p2", "name": "a.bin", "started": 20.0, "ended": 30.0, "status": "ok", "drop_first": True}
    assert needed_from_origin([first, second], catalogue) == 100  # p1 held it: p2 could fetch it there
    assert needed_from_origin([first, second], catalogue, [(15.0, "p1", "a.bin")]) == 200  # evicted first
