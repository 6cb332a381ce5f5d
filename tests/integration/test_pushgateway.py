"""Leecher runs push their final metrics to a real Pushgateway, each run in its own group, so
two runs at once both keep their metrics (a shared group would keep only the last push)."""

import socket
import subprocess
import urllib.request
from importlib.metadata import version

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.host_tools import host_tool
from tools.localswarm import free_port, random_file

from .conftest import wait_until


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def pushgateway() -> str:
    program = host_tool("prometheus-pushgateway", "prometheus-pushgateway")
    port = free_port()
    # No persistence file: the groups live in this process only.
    proc = subprocess.Popen([program, f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: ready(url) or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, "the Pushgateway exited at start"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def pushed_samples(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("job") == "p2p_leecher"
    }


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
    assert samples[("p2p_leecher_bytes_received_total", group(ok))] == 2 << 20
    assert samples[("push_time_seconds", group(ok))] > 0 and samples[("push_time_seconds", group(failed))] > 0
    assert samples[("p2p_build_info", group(ok, version=version("p2p-leecher")))] == 1
