"""Whole files through real processes: exact bytes for every awkward size, and the CLI contract."""

import subprocess
import sys

import pytest

from p2p_shared.limits import DEFAULT_CHUNK_SIZE
from tests.host_tools import host_tool
from tools.localswarm import LocalSwarm, Service, free_port, random_file, sha256_file, start_listening

from .conftest import scrape

SIZES = {
    "empty.bin": 0,
    "one-byte.bin": 1,
    "one-chunk.bin": DEFAULT_CHUNK_SIZE,
    "chunk-plus-one.bin": DEFAULT_CHUNK_SIZE + 1,
    "random-64mib.bin": 64 << 20,
}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """One tracker and three seeders, each seeding every file of SIZES."""
    work = tmp_path_factory.mktemp("swarm")
    files = [random_file(work / "seed" / name, size) for name, size in SIZES.items()]
    with LocalSwarm(work) as swarm:
        swarm.start_tracker()
        for _ in range(3):
            swarm.add_seeder(files)
        yield swarm, work


@pytest.mark.parametrize("name", list(SIZES))
def test_exact_bytes_from_three_seeders(seeded, tmp_path, name):
    swarm, work = seeded
    leecher = swarm.leecher(name, tmp_path / "out", "--min-seeders", "3")
    assert leecher.wait(120) == 0, leecher.output
    got = tmp_path / "out" / name
    assert got.stat().st_size == SIZES[name]
    assert sha256_file(got) == sha256_file(work / "seed" / name)
    assert not (tmp_path / "out" / f"{name}.part").exists()
    events = [e["event"] for e in leecher.events()]
    assert f"Download complete. File size: {SIZES[name]} bytes" in events
    assert f"Successfully downloaded {name}" in events


def test_download_by_file_id(seeded, tmp_path):
    swarm, work = seeded
    file_id = swarm.lookup("one-byte.bin").file.file_id
    leecher = swarm.leecher(file_id, tmp_path, "--min-seeders", "3")
    assert leecher.wait(60) == 0, leecher.output
    assert (tmp_path / "one-byte.bin").read_bytes() == (work / "seed" / "one-byte.bin").read_bytes()


def test_chunks_come_from_every_seeder(tmp_path):
    """Dynamic scheduling: with three seeders each one serves part of the file."""
    data = random_file(tmp_path / "seed" / "spread.bin", 16 << 20)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        ports = [swarm.add_seeder([data], "--chunk-size", str(64 << 10), metrics=True).metrics_port for _ in range(3)]
        leecher = swarm.leecher("spread.bin", tmp_path / "out", "--min-seeders", "3")
        assert leecher.wait(60) == 0, leecher.output
        served = [scrape(p)[("p2p_seeder_chunks_served_total", ())] for p in ports]
    assert sum(served) >= 256 and all(n > 0 for n in served), served


def test_existing_identical_file_is_kept_and_different_one_refused(seeded, tmp_path):
    swarm, work = seeded
    (tmp_path / "one-byte.bin").write_bytes((work / "seed" / "one-byte.bin").read_bytes())
    assert swarm.leecher("one-byte.bin", tmp_path).wait(60) == 0
    for name in ("one-chunk.bin", "empty.bin"):  # an empty file has no chunk to compare: sizes differ
        (tmp_path / name).write_bytes(b"mine")
        leecher = swarm.leecher(name, tmp_path)
        assert leecher.wait(60) == 1
        assert (tmp_path / name).read_bytes() == b"mine"
        assert "already exists and differs" in leecher.output and "Traceback" not in leecher.output


def test_unknown_file_with_wait_for_file_fails_after_the_wait_with_one_line(swarm, tmp_path):
    leecher = swarm.leecher("nothing-here.bin", tmp_path, "--wait", "1", "--wait-for-file")
    assert leecher.wait(30) == 1
    assert "no seeder holds nothing-here.bin (waited 1s)" in leecher.output
    assert "Traceback" not in leecher.output
    assert list(tmp_path.iterdir()) == []


def test_command_line_contract_as_written(tmp_path):
    """The three commands of the README, with their metrics endpoints scraped for real."""
    data = random_file(tmp_path / "seed" / "contract.bin", 3 * DEFAULT_CHUNK_SIZE + 5)
    bin_dir = sys.executable.rsplit("/", 1)[0]
    ports: dict[str, int] = {}

    def listening(name: str, argv_for, ready: str, env: dict | None = None) -> Service:
        service = start_listening(name, argv_for, ready, env)
        services.append(service)
        return service

    def tracker_argv() -> list[str]:
        ports["tracker"], ports["tracker metrics"] = free_port(2), free_port()
        return [f"{bin_dir}/p2p-tracker", "--host", "127.0.0.1", "--port", str(ports["tracker"]),
                "--metrics-port", str(ports["tracker metrics"])]

    def seeder_argv() -> list[str]:
        ports["seeder metrics"] = free_port()
        return [f"{bin_dir}/p2p-seeder", "-f", str(data), "-p", str(free_port()),
                "--tracker", f"127.0.0.1:{ports['tracker']}", "--metrics-port", str(ports["seeder metrics"])]

    def leecher_argv() -> list[str]:
        ports["leecher metrics"] = free_port()
        return [f"{bin_dir}/p2p-leecher", "contract.bin", "--tracker", f"127.0.0.1:{ports['tracker']}",
                "-o", str(tmp_path / "out"), "--min-seeders", "3", "--metrics-port", str(ports["leecher metrics"])]

    services = []
    json_logs = {"P2P_LOG_FORMAT": "json"}
    try:
        listening("tracker", tracker_argv, "tracker listening", json_logs)
        tmetrics = ports["tracker metrics"]
        seeder_metrics = []
        for _ in range(3):
            listening("seeder", seeder_argv, "registered with tracker",
                      {**json_logs, "XDG_CACHE_HOME": str(tmp_path / "cache")})
            seeder_metrics.append(ports["seeder metrics"])
        leecher = listening("leecher", leecher_argv, "downloading", json_logs)
        assert leecher.wait(60) == 0, leecher.output
        assert "Successfully downloaded contract.bin" in leecher.output
        assert (tmp_path / "out" / "contract.bin").read_bytes() == data.read_bytes()

        t = scrape(tmetrics)
        assert t[("p2p_tracker_live_holders", (("kind", "complete"),))] == 3
        assert t[("p2p_tracker_live_holders", (("kind", "partial"),))] == 0
        assert t[("p2p_tracker_files", ())] == 1
        # The three seeders, and the leecher: it shared while downloading and left when done.
        assert t[("p2p_tracker_registrations_total", (("result", "new"),))] == 4
        assert t[("p2p_tracker_unregistrations_total", ())] == 1
        assert t[("p2p_tracker_lookups_total", (("result", "found"),))] >= 1
        served = [scrape(p) for p in seeder_metrics]
        assert sum(s[("p2p_seeder_chunks_served_total", ())] for s in served) >= 4
        assert sum(s[("p2p_seeder_bytes_served_total", ())] for s in served) >= data.stat().st_size
        assert all(s[("p2p_seeder_registrations_total", (("result", "ok"),))] >= 1 for s in served)
        for s in served:  # every chunk served was timed once, and took some time
            timed = s[("p2p_seeder_chunk_serve_seconds_count", ())]
            assert timed == s[("p2p_seeder_chunks_served_total", ())]
            assert (s[("p2p_seeder_chunk_serve_seconds_sum", ())] > 0) == (timed > 0)
    finally:
        for service in reversed(services):
            service.stop()
    # A graceful stop unregisters: the seeders logged it before the tracker went away.
    assert all("unregistered from tracker" in s.output for s in services[1:4])


@pytest.mark.parametrize("role", ["tracker", "seeder", "leecher"])
def test_python_dash_m_works(role):
    result = subprocess.run([sys.executable, "-m", f"p2p_{role}", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and f"p2p-{role}" in result.stdout


def test_list_shows_every_seeded_file(seeded):
    swarm, _ = seeded
    result = subprocess.run(
        [sys.executable, "-m", "p2p_leecher", "--list", "--tracker", swarm.tracker_addr],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert set(rows) == set(SIZES)
    assert rows["one-chunk.bin"][1:4] == [str(DEFAULT_CHUNK_SIZE), "3", "0"]  # size, seeders, partial holders


def test_no_target_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "p2p_leecher"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin"})
    assert result.returncode == 2 and "give a file name" in result.stderr


def test_make_swarm_runs_end_to_end():
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "tools.swarm", "--size-mib", "4"], cwd=repo,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "Successfully downloaded demo.bin" in lines
    assert lines[-1].startswith("summary: 4 MiB from 3 seeders") and lines[-1].endswith("sha256 matches")


def test_make_swarm_with_peer_fetches_the_file_with_curl_through_the_gateway():
    """`make swarm SWARM_ARGS=--peer`: the same run, then the file through a p2p-peer, exact."""
    host_tool("curl", "curl")
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "tools.swarm", "--size-mib", "4", "--peer"], cwd=repo,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "Successfully downloaded demo.bin" in lines
    assert lines[-2].startswith("summary: 4 MiB from 3 seeders") and lines[-2].endswith("sha256 matches")
    assert lines[-1].startswith("peer: 4 MiB with curl through p2p-peer's gateway (http://127.0.0.1:")
    assert "/files/demo.bin) in " in lines[-1] and lines[-1].endswith("sha256 matches")
