"""The swarm as local processes, for `make swarm`, the integration tests and the benchmark.

Every service runs as a real process (`python -m p2p_<role>`) on free loopback ports with
JSON logs; a reader thread collects its log lines so callers can wait for an event ("seeder
registered") instead of sleeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource  # noqa: F401 (for the annotation)
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from p2p_shared import messages


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for start in range(0, size, 1 << 20):
            f.write(os.urandom(min(1 << 20, size - start)))
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free right now; another process may take it before ours binds it, so services
    started on one go through `start_listening`, which retries on EADDRINUSE."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A running process and the log lines it has printed so far (stdout and stderr)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
        self.name = name
        self.argv = argv
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        self.proc.stdout.close()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def events(self) -> list[dict]:
        with self._cond:
            found = []
            for line in self.lines:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
            return found

    def wait_for(self, match: Callable[[dict], bool] | str, timeout: float = 30.0, start: int = 0) -> dict:
        """Block until a JSON log line matches (an event name, or a predicate); return it."""
        predicate = match if callable(match) else (lambda e: e.get("event") == match)
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    seen += 1
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-20:])
                    raise TimeoutError(f"{self.name}: no log line matching {match!r}; last lines:\n{tail}")
                self._cond.wait(min(remaining, 0.5))

    def wait_for_text(self, text: str, timeout: float = 30.0) -> None:
        """Block until a line containing `text` is printed (services that do not log JSON)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-20:])
                    raise TimeoutError(f"{self.name}: no line with {text!r}; last lines:\n{tail}")
                self._cond.wait(min(remaining, 0.5))

    def mark(self) -> int:
        """Position in the log, to wait only for lines printed after this point."""
        with self._cond:
            return len(self.lines)

    def wait(self, timeout: float = 60.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def wait_with_usage(self) -> tuple[int, "resource.struct_rusage"]:
        """Wait for exit; also return the process's own resource usage (peak RSS, CPU time)."""
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._reader.join(5)
        return self.proc.returncode, usage

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait(timeout)


def start_listening(
    name: str,
    argv_for: Callable[[], list[str]],
    ready: str,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    attempts: int = 5,
) -> Service:
    """Start a service on ports that `argv_for` picks afresh on each call, until it logs `ready`.

    Ports come from `free_port`, so a concurrent test suite may take one between our pick and
    the service's bind: a service that exits saying so is started again on new ports.
    """
    for attempt in range(attempts):
        service = Service(name, argv_for(), env)
        try:
            service.wait_for(ready, timeout)
            return service
        except TimeoutError:
            lost_a_port = service.proc.poll() is not None and "Address already in use" in service.output
            if not lost_a_port or attempt == attempts - 1:
                service.stop()
                raise
    raise AssertionError("unreachable")


class RedisServer:
    """A real redis-server on a free loopback port, its data in memory only: a restart (or a
    kill and a start) brings it back empty, as after losing its data."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.args = args
        self.port = 0
        self.service: Service | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it (on its old port after a stop, so its clients find it again)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            if self.port == 0 or attempt:
                self.port = free_port()
            argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self.workdir), *self.args]
            service = Service("redis", argv)
            try:
                service.wait_for_text("Ready to accept connections")
                self.service = service
                return self
            except TimeoutError:
                service.stop()
                if "Address already in use" not in service.output or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections and answers nothing (a stalled Redis)."""
        assert self.service is not None
        self.service.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.service is not None
        self.service.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.service is not None:
            self.resume()
            self.service.stop()

    def kill(self) -> None:
        if self.service is not None:
            self.service.send_signal(signal.SIGKILL)
            self.service.wait()


MASTER_NAME = "p2p"  # the name Sentinel watches the registry's primary under


def sentinel_config(
    port: int, bind: str, primary: tuple[str, int], quorum: int, down_after: float, failover_timeout: float,
    folder: Path,
) -> list[str]:
    """A sentinel's command line: its config file written in `folder` (Sentinel rewrites it as it
    learns), watching `primary` as MASTER_NAME; `down_after` and `failover_timeout` in seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"sentinel-{port}.conf"
    config.write_text("\n".join([
        f"port {port}", f"bind {bind}", "protected-mode no", f"dir {folder}",
        f"sentinel monitor {MASTER_NAME} {primary[0]} {primary[1]} {quorum}",
        f"sentinel down-after-milliseconds {MASTER_NAME} {int(down_after * 1000)}",
        f"sentinel failover-timeout {MASTER_NAME} {int(failover_timeout * 1000)}",
        f"sentinel parallel-syncs {MASTER_NAME} 1", "",
    ]))
    return ["redis-server", str(config), "--sentinel"]


class SentinelGroup:
    """The registry's Redis as a primary, a replica and three sentinels (quorum 2) on loopback:
    `url` is the tracker's `redis+sentinel://` URL. Kill the primary (`servers[primary_index]`)
    and the sentinels make the replica the primary within about `down_after` plus an election."""

    def __init__(self, workdir: Path, down_after: float = 1.0, failover_timeout: float = 5.0, sentinels: int = 3) -> None:
        self.workdir = workdir
        self.down_after, self.failover_timeout = down_after, failover_timeout
        self.servers = [RedisServer(workdir / "primary"), RedisServer(workdir / "replica")]
        self.sentinel_ports: list[int] = []
        self.sentinels: list[Service] = []
        self.count = sentinels

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in self.sentinel_ports)}/{MASTER_NAME}/0"

    def start(self) -> SentinelGroup:
        primary, replica = self.servers
        primary.start()
        replica.args = ("--replicaof", "127.0.0.1", str(primary.port))
        replica.start()
        for _ in range(self.count):
            port = free_port()
            argv = sentinel_config(port, "127.0.0.1", ("127.0.0.1", primary.port), 2, self.down_after,
                                   self.failover_timeout, self.workdir / "sentinels")
            sentinel = Service("sentinel", argv)
            sentinel.wait_for_text("+monitor master")
            self.sentinels.append(sentinel)
            self.sentinel_ports.append(port)
        return self

    def primary_port(self) -> int:
        """The port the sentinels name as the primary now (asked of the first that answers)."""
        for port in self.sentinel_ports:
            answer = subprocess.run(["redis-cli", "-p", str(port), "sentinel", "get-master-addr-by-name", MASTER_NAME],
                                    capture_output=True, text=True, timeout=5).stdout.split()
            if len(answer) == 2:
                return int(answer[1])
        raise TimeoutError("no sentinel names a primary")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


def service_argv(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"p2p_{role}", *args]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of a real /metrics endpoint on loopback, keyed by (name, sorted labels)."""
    return scrape_url(f"http://127.0.0.1:{port}")


def scrape_url(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of `url`/metrics (a service, a Pushgateway), keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def tracker_request(address: tuple[str, int], message: messages.Request, timeout: float = 1.0, attempts: int = 5):
    """A blocking request to the tracker over real UDP, for tests and tools (connects first)."""
    if isinstance(message, messages.ProvenRequest) and message.conn is None:
        connected = tracker_request(address, messages.Connect(), timeout, attempts)
        message = message.model_copy(update={"conn": connected.conn})
    data = messages.encode_request(message)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        for _ in range(attempts):
            sock.sendto(data, address)
            try:
                reply, _ = sock.recvfrom(65536)
            except TimeoutError:
                continue
            return messages.decode(reply)
    raise TimeoutError(f"no answer from tracker {address}")


class LocalSwarm:
    """A tracker and seeders on loopback. Use as a context manager; everything stops on exit.

    With `registry` (a Redis URL) the tracker may run as several replicas (`start_tracker(replica=1)`):
    seeders and leechers are then given every replica (`tracker_addr`)."""

    def __init__(
        self, workdir: Path, heartbeat: float = 1.0, env: dict[str, str] | None = None, registry: str | None = None
    ) -> None:
        self.workdir = workdir
        self.heartbeat = heartbeat
        self.env = {"P2P_LOG_FORMAT": "json", **(env or {})}
        self.registry = registry
        self.trackers: list[Service] = []  # one per replica, the latest process of each
        self.tracker_ports: list[int] = []  # chosen when each replica first starts
        self.seeders: list[Service] = []
        self.others: list[Service] = []

    @property
    def tracker(self) -> Service | None:
        return self.trackers[0] if self.trackers else None

    @property
    def tracker_port(self) -> int:
        return self.tracker_ports[0] if self.tracker_ports else 0

    @tracker_port.setter
    def tracker_port(self, port: int) -> None:
        """Where the (only) tracker is, or will be once started."""
        self.tracker_ports = [port]

    @property
    def tracker_addr(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.tracker_ports)

    def start_tracker(self, *args: str, metrics: bool = False, replica: int = 0) -> Service:
        """A tracker replica (0 unless several), on its old port when restarted; `metrics`: its
        endpoint on `.metrics_port`. Replica n is started after replicas 0 to n - 1."""
        restart = replica < len(self.tracker_ports)
        port = self.tracker_ports[replica] if restart else 0
        metrics_port = 0

        def argv() -> list[str]:
            nonlocal port, metrics_port
            if not restart:
                port = free_port(socket.SOCK_DGRAM)
            metrics_port = free_port() if metrics else 0
            registry = ["--registry", self.registry] if self.registry else []
            return service_argv(
                "tracker",
                "--host", "127.0.0.1",
                "--port", str(port),
                "--heartbeat-interval", str(self.heartbeat),
                "--metrics-port", str(metrics_port),
                *registry,
                *args,
            )

        tracker = start_listening("tracker", argv, "tracker listening", self.env)
        tracker.port, tracker.metrics_port = port, metrics_port  # type: ignore[attr-defined]
        if not restart:
            self.tracker_ports.append(port)
        if replica < len(self.trackers):
            self.trackers[replica] = tracker
        else:
            self.trackers.append(tracker)
        return tracker

    def add_seeder(self, files: list[Path], *args: str, metrics: bool = False) -> Service:
        """A seeder on `.port`, registered; `metrics`: its endpoint on `.metrics_port`."""
        port = metrics_port = 0

        def argv() -> list[str]:
            nonlocal port, metrics_port
            port, metrics_port = free_port(), free_port() if metrics else 0
            argv = service_argv("seeder", "-p", str(port), "--host", "127.0.0.1", "--tracker", self.tracker_addr)
            for f in files:
                argv += ["-f", str(f)]
            if "--metrics-port" not in args:
                argv += ["--metrics-port", str(metrics_port)]
            if "--cache-dir" not in args:
                argv += ["--cache-dir", str(self.workdir / "manifest-cache")]
            return argv + list(args)

        seeder = start_listening("seeder", argv, "registered with tracker", self.env, timeout=120)
        seeder.port, seeder.metrics_port = port, metrics_port  # type: ignore[attr-defined]
        self.seeders.append(seeder)
        return seeder

    def add_peer(self, cache_dir: Path, *args: str, ports: tuple[int, int, int] | None = None) -> Service:
        """A per-host peer (p2p-peer), registered: its peer port `.port`, its gateway at `.url`
        (`.http_port`), its metrics on `.metrics_port`. `ports` starts it again where it was."""
        port = http_port = metrics_port = 0

        def argv() -> list[str]:
            nonlocal port, http_port, metrics_port
            port, http_port, metrics_port = ports or (free_port(), free_port(), free_port())
            return service_argv(
                "peer", "-p", str(port), "--host", "127.0.0.1", "--tracker", self.tracker_addr,
                "--cache-dir", str(cache_dir), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
                "--metrics-host", "127.0.0.1", *args,
            )

        peer = start_listening("peer", argv, "registered with tracker", self.env, timeout=120)
        peer.port, peer.http_port, peer.metrics_port = port, http_port, metrics_port  # type: ignore[attr-defined]
        peer.url = f"http://127.0.0.1:{http_port}"  # type: ignore[attr-defined]
        peer.ports = (port, http_port, metrics_port)  # type: ignore[attr-defined]
        self.others.append(peer)
        return peer

    def leecher(self, target: str, output: Path, *args: str, env: dict[str, str] | None = None) -> Service:
        argv = service_argv("leecher", target, "--tracker", self.tracker_addr, "-o", str(output), *args)
        if "--metrics-port" not in args:
            argv += ["--metrics-port", "0"]
        leecher = Service("leecher", argv, {**self.env, **(env or {})})
        self.others.append(leecher)
        return leecher

    def lookup(self, target: str, replica: int = 0) -> messages.Peers:
        key = {"file_id": target} if len(target) == 64 else {"name": target}
        reply = tracker_request(("127.0.0.1", self.tracker_ports[replica]), messages.Lookup(**key))
        assert isinstance(reply, messages.Peers), reply
        return reply

    def stop(self) -> None:
        for service in [*self.others, *self.seeders, *self.trackers]:
            service.stop()

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
