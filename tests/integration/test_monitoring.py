"""Monitoring on real processes: a real Pushgateway receiving leecher runs, and a real Prometheus
(Debian's, no Docker) scraping a local swarm, loading the shipped alert rules, answering every
dashboard query and raising an alert."""

import json
import socket
import subprocess
import urllib.parse
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from tests.dashboard import queries_as_grafana_sends
from tests.host_tools import host_tool
from tools.localswarm import LocalSwarm, free_port, random_file, scrape_url

from .conftest import wait_until

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules" / "p2p.rules.yml"
SCRAPE_INTERVAL = 1.0


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start(argv: list[str], port: int, log: Path):
    """A server process, once it answers /-/ready; its log kept for the failure message."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: ready(url) or proc.poll() is not None, timeout=60)
    if proc.poll() is not None:
        raise AssertionError(f"{argv[0]} exited at start:\n{log.read_text()}")
    return proc, url


@pytest.fixture
def pushgateway(tmp_path):
    program = host_tool("prometheus-pushgateway", "prometheus-pushgateway")
    port = free_port()
    # No persistence file: the groups live in this process only.
    proc, url = start([program, f"--web.listen-address=127.0.0.1:{port}"], port, tmp_path / "pushgateway.log")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def pushed_samples(url: str) -> dict[tuple[str, tuple], float]:
    return {key: value for key, value in scrape_url(url).items() if ("job", "p2p_leecher") in key[1]}


def test_concurrent_runs_push_to_their_own_groups(swarm, tmp_path, pushgateway):
    seeded = random_file(tmp_path / "demo.bin", 2 << 20)
    swarm.add_seeder([seeded])
    ok = swarm.leecher("demo.bin", tmp_path / "out-1", "--pushgateway", pushgateway)
    failed = swarm.leecher("missing.bin", tmp_path / "out-2", "--wait", "0", "--pushgateway", pushgateway)
    assert ok.wait() == 0, ok.output
    assert failed.wait() == 1, failed.output

    samples = pushed_samples(pushgateway)

    def group(run, **labels) -> tuple:
        instance = f"{socket.gethostname()}-{run.proc.pid}"
        return tuple(sorted({"job": "p2p_leecher", "instance": instance, **labels}.items()))

    assert samples[("p2p_leecher_downloads_total", group(ok, result="ok"))] == 1
    assert samples[("p2p_leecher_downloads_total", group(failed, result="failed"))] == 1
    assert samples[("p2p_leecher_bytes_received_total", group(ok, source="seeder"))] == 2 << 20
    assert samples[("push_time_seconds", group(ok))] > 0 and samples[("push_time_seconds", group(failed))] > 0
    assert samples[("p2p_build_info", group(ok, version=version("p2p-leecher")))] == 1


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]


def api(prometheus: str, path: str) -> dict:
    with urllib.request.urlopen(f"{prometheus}/api/v1/{path}", timeout=5) as response:
        return json.loads(response.read())["data"]


def test_prometheus_answers_every_dashboard_query_and_fires_an_alert(tmp_path, pushgateway):
    program = host_tool("prometheus", "prometheus")
    with LocalSwarm(tmp_path) as swarm:
        prometheus_scrapes_a_swarm(swarm, program, tmp_path, pushgateway)


def prometheus_scrapes_a_swarm(swarm: LocalSwarm, program: str, tmp_path: Path, pushgateway: str) -> None:
    seeded = random_file(tmp_path / "demo.bin", 4 << 20)
    metrics_ports = [free_port() for _ in range(3)]
    swarm.start_tracker("--metrics-port", str(metrics_ports[0]), "--metrics-host", "127.0.0.1")
    for port in metrics_ports[1:]:
        swarm.add_seeder([seeded], "--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    peer = swarm.add_peer(tmp_path / "peer-cache")
    # The shipped rules, and the scrape jobs of deploy/prometheus/prometheus.yml on loopback.
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL:g}s", "evaluation_interval": f"{SCRAPE_INTERVAL:g}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "tracker", "static_configs": [{"targets": [f"127.0.0.1:{metrics_ports[0]}"]}]},
            {"job_name": "seeder", "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in metrics_ports[1:]]}]},
            {"job_name": "peer", "static_configs": [{"targets": [f"127.0.0.1:{peer.metrics_port}"]}]},
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [pushgateway.removeprefix("http://")]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc, prometheus = start(
        [program, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        port, tmp_path / "prometheus.log",
    )
    try:
        ok = swarm.leecher("demo.bin", tmp_path / "out-1", "--pushgateway", pushgateway)
        assert ok.wait() == 0, ok.output
        failed = swarm.leecher("missing.bin", tmp_path / "out-2", "--wait", "0", "--pushgateway", pushgateway)
        assert failed.wait() == 1, failed.output
        # The peer's gateway: one file fetched through the swarm, then read again from its cache.
        for _ in range(2):
            with urllib.request.urlopen(f"{peer.url}/files/demo.bin", timeout=60) as response:
                assert response.read() == seeded.read_bytes()
        with urllib.request.urlopen(f"{peer.url}/v2/", timeout=60) as response:  # the registry mirror's base
            assert response.status == 200

        [group] = api(prometheus, "rules")["groups"]
        assert len(group["rules"]) >= 8
        # Health is "unknown" until a rule's first evaluation, then "ok" unless it errors.
        healths = lambda: {rule["health"] for rule in api(prometheus, "rules")["groups"][0]["rules"]}
        wait_until(lambda: "unknown" not in healths(), timeout=30, every=0.5)
        assert healths() == {"ok"}
        queries = queries_as_grafana_sends(scrape_interval=SCRAPE_INTERVAL)
        for expr in queries:
            try:
                wait_until(lambda: query(prometheus, expr), timeout=60, every=0.5)
            except TimeoutError:
                targets = [(t["labels"]["job"], t["health"], t["lastError"]) for t in api(prometheus, "targets")["activeTargets"]]
                raise AssertionError(f"no data for the dashboard query {expr}; targets: {targets}") from None
        firing = lambda: {a["labels"]["alertname"] for a in api(prometheus, "alerts")["alerts"] if a["state"] == "firing"}
        wait_until(lambda: "P2PLeecherRunFailed" in firing(), timeout=60, every=0.5)
        assert "P2PTrackerDown" not in firing() and "P2PFileWithoutSeeders" not in firing()
    finally:
        proc.terminate()
        proc.wait(30)
