"""The benchmark harness on tiny sizes: it must keep working, whatever the figures."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_quick_run_writes_every_figure(tmp_path):
    out = tmp_path / "quick.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    head = figures["swarm"]["one_leecher_three_seeders"]
    assert head["seconds"] > 0 and head["rss_mb"] > 0 and head["seeder_peak_rss_mb"] > 0
    assert figures["baselines"]["tcp_hash_seconds"] > 0
    assert set(figures["swarm"]["by_seeders"]) == {"1", "2", "3", "5"}
    many = figures["many_leechers"]
    assert many["share"]["all_exact"] is True and many["no_share"]["all_exact"] is True
    # Without sharing every copy comes from the seeders; with it, the leechers carry part of it.
    assert many["no_share"]["seeder_egress_bytes"] >= many["leechers"] * many["bytes"]
    assert 0 < many["share"]["seeder_egress_bytes"] < many["no_share"]["seeder_egress_bytes"]
    assert figures["startup"]["restart_unchanged_seconds"] > 0
    assert figures["tracker"]["requests_per_second"] > 100
    assert figures["tracker"]["half_load"]["answered"] > 0
    assert "tracker capacity" in result.stdout
    if shutil.which("redis-server"):  # the Redis store, one and two replicas, and failover
        assert {k: v["requests_per_second"] > 100 for k, v in figures["tracker"]["redis"].items()} == {"1": True, "2": True}
        for how in ("killed", "frozen"):
            assert 0 < max(figures["tracker"]["failover"][how]["lookup_seconds"]) < 2.0
