"""Hosts as Linux network namespaces on one bridge, each link shaped with `tc`.

Every host is a namespace with one interface, `eth0`, whose other end is a port of a bridge
that lives in a namespace of its own (the "switch"), so nothing is added to the machine's own
network and its firewall never sees the traffic. A host's uplink is shaped by a `tbf` on its
`eth0`, its downlink by a `tbf` on its switch port; delay and loss (`netem`) go on the uplink,
half the round trip each way, where the kernel has netem. Addresses come from 198.18.0.0/15,
the range reserved for benchmarks.

Names carry a run id (`p2pnet-<run>-...`) and the run writes its process id to
/run/p2pnet/<run>; namespaces whose run is no longer alive are leftovers: a new run refuses to
start over them until `python -m bench.net clean` removes them (their processes first, since a
process outlives the deletion of its namespace).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools.localswarm import Service

PREFIX = "p2pnet-"
OWNERS = Path("/run/p2pnet")
NETWORK = ipaddress.ip_network("198.18.0.0/15")


class NamespaceError(RuntimeError):
    """The testbed cannot be built or used here (a one-line reason)."""


def sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NamespaceError(f"{' '.join(argv)}: {(result.stderr or result.stdout).strip()}")
    return result


def _probe(*argv: str) -> subprocess.CompletedProcess:
    """Run a command in a throwaway namespace (named like ours, so a crash leaves a findable leftover)."""
    probe = f"{PREFIX}p{os.getpid()}-probe"
    made = sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return made
    try:
        return sh("ip", "netns", "exec", probe, *argv, check=False)
    finally:
        sh("ip", "netns", "del", probe, check=False)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool} command (iproute2) is missing"
    made = _probe("true")
    return None if made.returncode == 0 else f"cannot create a network namespace: {made.stderr.strip()}"


def netem_available() -> bool:
    """Whether this kernel has netem (delay and loss); probed on a throwaway namespace's loopback."""
    return _probe("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms").returncode == 0


def _owner_alive(run_id: str) -> bool:
    try:
        pid = int(run_id[1:]) if run_id.startswith("p") else int((OWNERS / run_id).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _our_namespaces() -> list[str]:
    listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def leftovers() -> list[str]:
    """Namespaces of runs that are no longer alive (and probes of dead processes)."""
    return [ns for ns in _our_namespaces() if not _owner_alive(ns[len(PREFIX):].split("-")[0])]


def _remove_namespace(ns: str) -> None:
    for _ in range(3):
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        if not pids:
            break
        time.sleep(0.2)
    sh("ip", "netns", "del", ns, check=False)


def clean() -> list[str]:
    """Remove every leftover namespace with its processes, and dead runs' folders; return the namespaces."""
    gone = leftovers()
    for ns in gone:
        _remove_namespace(ns)
    folders = [p for p in Path(tempfile.gettempdir()).glob(f"{PREFIX}*") if p.is_dir()]
    for path in [*folders, *(OWNERS.glob("*") if OWNERS.exists() else [])]:
        if not _owner_alive(path.name.removeprefix(PREFIX).split("-")[0]):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return gone


@dataclass(frozen=True)
class Link:
    """One host's access link: bits per second each way, and delay and loss where netem exists."""

    up: float
    down: float
    rtt_ms: float = 0.0
    loss_percent: float = 0.0

    @property
    def needs_netem(self) -> bool:
        return bool(self.rtt_ms or self.loss_percent)


@dataclass(frozen=True)
class Host:
    name: str  # short: "tracker", "s1", "l8"; also its switch port's name
    ns: str
    ip: str
    link: Link


def _tbf(rate_bps: float) -> list[str]:
    # The bucket must hold a whole GSO burst (64 KiB) or tbf drops it; 10 ms of the rate otherwise.
    # A 50 ms queue at the link's rate: a modest router buffer, enough for TCP to fill the link.
    burst = max(int(rate_bps / 8 / 100), 96 * 1024)
    return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", "50ms"]


class Testbed:
    """A switch and hosts; use as a context manager: everything it made goes on exit, whatever happens."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.switch = f"{PREFIX}{self.run_id}-sw"
        self.workdir = Path(tempfile.gettempdir()) / f"{PREFIX}{self.run_id}"
        self.hosts: dict[str, Host] = {}
        self.services: list[Service] = []

    def __enter__(self) -> Testbed:
        reason = unavailable_reason()
        if reason:
            raise NamespaceError(reason)
        found = leftovers()
        if found:
            raise NamespaceError(
                f"leftovers of an earlier run ({', '.join(found)}); remove them with `make bench-net-clean`"
            )
        OWNERS.mkdir(parents=True, exist_ok=True)
        (OWNERS / self.run_id).write_text(str(os.getpid()))
        self.workdir.mkdir()
        try:
            sh("ip", "netns", "add", self.switch)
            self._in(self.switch, "ip", "link", "set", "lo", "up")
            self._in(self.switch, "ip", "link", "add", "br0", "type", "bridge")
            self._in(self.switch, "ip", "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for service in reversed(self.services):
            try:
                service.stop(timeout=5)
            except Exception:  # noqa: BLE001 (a stuck process is SIGKILLed below with its namespace)
                pass
        for host in self.hosts.values():
            _remove_namespace(host.ns)
        _remove_namespace(self.switch)
        shutil.rmtree(self.workdir, ignore_errors=True)
        (OWNERS / self.run_id).unlink(missing_ok=True)

    def _in(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    def add_host(self, name: str, link: Link) -> Host:
        ip = str(NETWORK.network_address + len(self.hosts) + 1)
        host = Host(name, f"{PREFIX}{self.run_id}-{name}", ip, link)
        self.hosts[name] = host
        sh("ip", "netns", "add", host.ns)
        sh("ip", "link", "add", "name", "eth0", "netns", host.ns, "type", "veth", "peer", "name", name, "netns", self.switch)
        self._in(self.switch, "ip", "link", "set", "dev", name, "master", "br0", "up")
        self._in(self.switch, "tc", "qdisc", "add", "dev", name, "root", *_tbf(link.down))
        self._in(host.ns, "ip", "addr", "add", f"{ip}/{NETWORK.prefixlen}", "dev", "eth0")
        self._in(host.ns, "ip", "link", "set", "lo", "up")
        self._in(host.ns, "ip", "link", "set", "eth0", "up")
        if link.needs_netem:
            delay = f"{link.rtt_ms / 2:g}ms"
            self._in(host.ns, "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "netem",
                     "delay", delay, "loss", f"{link.loss_percent:g}%")
            self._in(host.ns, "tc", "qdisc", "add", "dev", "eth0", "parent", "1:", "handle", "2:", *_tbf(link.up))
        else:
            self._in(host.ns, "tc", "qdisc", "add", "dev", "eth0", "root", *_tbf(link.up))
        return host

    def start(self, host: Host, argv: list[str], env: dict[str, str] | None = None, label: str | None = None) -> Service:
        """A process inside the host's namespace (`ip netns exec` execs it: its pid is the service's)."""
        service = Service(label or host.name, ["ip", "netns", "exec", host.ns, *argv], env)
        self.services.append(service)
        return service

    def counter(self, host: Host, name: str) -> int:
        """An interface counter of the host's eth0 (tx_bytes: what the host sent), read in its namespace."""
        return int(self._in(host.ns, "cat", f"/sys/class/net/eth0/statistics/{name}").stdout)

    def tx_bytes(self, host: Host) -> int:
        return self.counter(host, "tx_bytes")

    def rx_bytes(self, host: Host) -> int:
        return self.counter(host, "rx_bytes")

    def cut(self, host: Host) -> None:
        """Take the host off the bridge: its switch port goes down (its eth0 loses carrier)."""
        self._in(self.switch, "ip", "link", "set", "dev", host.name, "down")

    def heal(self, host: Host) -> None:
        self._in(self.switch, "ip", "link", "set", "dev", host.name, "up")
