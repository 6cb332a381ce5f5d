import hashlib
import os
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tools.localswarm import LocalSwarm

pytestmark = pytest.mark.integration


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, 1 << 20))
            f.write(block)
            remaining -= len(block)
    return path


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of a real /metrics endpoint, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def swarm(tmp_path):
    with LocalSwarm(tmp_path) as s:
        s.start_tracker()
        yield s


def wait_until(condition, timeout: float = 30.0, every: float = 0.02):
    """Poll a condition that has no event to wait on (a metric, a tracker answer)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(every)


def chunks_served(metrics_port: int) -> float:
    try:
        return scrape(metrics_port)[("p2p_seeder_chunks_served_total", ())]
    except OSError:
        return 0.0
