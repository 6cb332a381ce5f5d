import pytest
from tools.localswarm import LocalSwarm, scrape  # noqa: F401 (the tests import scrape from here)



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
