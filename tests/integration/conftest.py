import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tools.localswarm import LocalSwarm, scrape  # noqa: F401 (the tests import scrape from here)


@pytest.fixture
def swarm(tmp_path):
    with LocalSwarm(tmp_path) as s:
        s.start_tracker()
        yield s


def events_named(service, name: str) -> list[dict]:
    """A service's log events called `name`, in order."""
    return [e for e in service.events() if e.get("event") == name]


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


class Pushgateway:
    """A stand-in Pushgateway on a port the kernel picked: keeps the metrics a leecher pushes
    when its run ends (the only way to read a finished leecher's counters)."""

    def __init__(self) -> None:
        self.pushed: list[str] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.pushed.append(body.decode())
                self.send_response(200)
                self.end_headers()

            do_POST = do_PUT

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def samples(self) -> dict[tuple[str, tuple], float]:
        """Every sample of the one push received, keyed like `scrape`."""
        assert len(self.pushed) == 1, f"{len(self.pushed)} pushes"
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(self.pushed[0])
            for s in family.samples
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pushgateway():
    sink = Pushgateway()
    yield sink
    sink.close()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free port, for tracker replicas (skipped without one, failing under CI)."""
    from tests.host_tools import host_tool
    from tools.localswarm import RedisServer

    host_tool("redis-server", "redis-server")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
