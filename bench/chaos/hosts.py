"""The soak's swarm on the shaped testbed: every service a host (a network namespace), every
process restartable, its output appended to a log file of the run (the checker reads those).

Hosts: r1 and r2 (Redis primary and replica, a sentinel on each), t1 and t2 (tracker replicas on
`redis+sentinel://`, a third sentinel on t1), s1 and s2 (seeders of the whole catalogue), p1 to p8
(long-running p2p-peers, each cache on its own small ext4 filesystem so it can be filled; the
workload reads files with curl through each host's own gateway).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.net.testbed import PREFIX, Host, Link, Testbed, _owner_alive, sh
from tools.localswarm import MASTER_NAME, sentinel_config

TRACKER_PORT, SEEDER_PORT, PEER_PORT, GATEWAY_PORT = 6969, 7000, 7001, 7080
REDIS_PORT, SENTINEL_PORT = 6379, 26379
HEARTBEAT, MISSED = 2.0, 3  # a silent holder is forgotten after 6 s
DOWN_AFTER, FAILOVER_TIMEOUT = 2.0, 10.0  # Sentinel: a primary silent for 2 s is replaced
PEER_WAIT = 20.0  # a peer's --wait: seconds without a holder (or a verified chunk) before it gives up
SERVICE_LINK = Link(200e6, 200e6)
PEER_LINK = Link(100e6, 100e6)


def command(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class Proc:
    """One service on a host: started, killed, frozen and started again; its output appended to
    `log` (one file across restarts)."""

    name: str  # "t1", "s2", "p5", "redis-r1", "sentinel-t1"
    host: Host
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    ready: str | None = None  # text its log shows once it is up
    popen: subprocess.Popen | None = None
    held: bool = False  # down on purpose (killed, stopped); otherwise an exit is unexpected
    argv_for: Callable[[], list[str]] | None = None  # the command line decided afresh at each start

    def exited(self) -> int | None:
        """Its exit code, if it ended when nothing asked it to."""
        if self.held or self.popen is None:
            return None
        return self.popen.poll()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen and self.popen.poll() is None else None

    def start(self) -> None:
        self.held = False
        if self.argv_for is not None:
            self.argv = self.argv_for()
        with open(self.log, "a") as out:
            offset = out.tell()
            faked = f" FAKETIME={self.env['FAKETIME']}" if "FAKETIME" in self.env else ""
            out.write(f"# chaos: start {time.time():.3f}{faked}\n")
            out.flush()
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", self.host.ns, *self.argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "P2P_LOG_FORMAT": "json", **self.env}, start_new_session=True,
            )
        self._offset = offset

    def wait_ready(self, timeout: float = 60) -> None:
        if self.ready is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log, errors="replace") as f:
                f.seek(self._offset)
                if self.ready in f.read():
                    return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace").splitlines()[-10:]
        raise TimeoutError(f"{self.name} not ready ({self.ready!r}); last lines:\n" + "\n".join(tail))

    def signal(self, sig: int) -> None:
        if self.pid is not None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.held = True
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGCONT)  # a frozen process dies too, and at once
            self.popen.kill()
            self.popen.wait(10)

    def stop(self, timeout: float = 10) -> None:
        self.held = True
        if self.popen is None or self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


class Disk:
    """A small ext4 filesystem on a loop device, mounted at `path` (a peer's cache): it can be
    filled, which tmpfs and the machine's own disk cannot be here."""

    def __init__(self, image: Path, path: Path, size: int) -> None:
        self.image, self.path, self.size = image, path, size
        self.ballast = path / "ballast"  # beside the cache folder: a peer removes strangers from it
        self.cache = path / "cache"

    def __enter__(self) -> Disk:
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        sh("mkfs.ext4", "-q", "-F", "-m", "0", str(self.image), timeout=60)
        self.path.mkdir(parents=True, exist_ok=True)
        sh("mount", "-o", "loop", str(self.image), str(self.path), timeout=60)
        self.cache.mkdir()
        return self

    def fill(self) -> int:
        """Take every free byte (a ballast file); the bytes taken."""
        free = os.statvfs(self.cache)
        size = free.f_bavail * free.f_frsize
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # Most of it at once; the rest (the filesystem's own blocks decide) a block at a time.
            os.posix_fallocate(fd, 0, max(1, size - (16 << 20)))
            os.lseek(fd, 0, os.SEEK_END)
            for block in (bytes(1 << 20), bytes(4096)):
                try:
                    while os.write(fd, block):
                        pass
                except OSError:
                    pass
            return os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        for _ in range(20):
            if sh("umount", str(self.path), check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            sh("umount", "-l", str(self.path), check=False)
        self.image.unlink(missing_ok=True)


def unmount_leftovers() -> list[str]:
    """Unmount the loop filesystems of soaks no longer alive (`python -m bench.chaos clean`)."""
    gone = []
    root = Path(tempfile.gettempdir())
    for line in Path("/proc/mounts").read_text().splitlines():
        target = Path(line.split()[1])
        if target.parent.parent == root and target.parent.name.startswith(PREFIX):
            if not _owner_alive(target.parent.name.removeprefix(PREFIX).split("-")[0]):
                sh("umount", "-l", str(target), check=False)
                gone.append(str(target))
    return gone


class ChaosSwarm:
    """Hosts and processes of one soak; `procs` by name. Built by `build`, torn down by `close`."""

    def __init__(self, bed: Testbed, logs: Path, catalogue: list[Path], cache_bytes: int, disk_bytes: int) -> None:
        self.bed, self.logs, self.catalogue = bed, logs, catalogue
        self.cache_bytes, self.disk_bytes = cache_bytes, disk_bytes
        self.hosts: dict[str, Host] = {}
        self.procs: dict[str, Proc] = {}
        self.disks: dict[str, Disk] = {}
        self.redis_hosts = ["r1", "r2"]
        self.trackers = ["t1", "t2"]
        self.seeders = ["s1", "s2"]
        self.peers = [f"p{i}" for i in range(1, 9)]

    @property
    def tracker_addr(self) -> str:
        return ",".join(f"{self.hosts[t].ip}:{TRACKER_PORT}" for t in self.trackers)

    @property
    def sentinel_hosts(self) -> list[str]:
        return [*self.redis_hosts, self.trackers[0]]

    @property
    def registry_url(self) -> str:
        where = ",".join(f"{self.hosts[h].ip}:{SENTINEL_PORT}" for h in self.sentinel_hosts)
        return f"redis+sentinel://{where}/{MASTER_NAME}/0"

    def _proc(self, name: str, host: str, argv: list[str], ready: str | None) -> Proc:
        proc = Proc(name, self.hosts[host], argv, self.logs / f"{name}.log", ready=ready)
        self.procs[name] = proc
        return proc

    def build(self) -> None:
        for name in [*self.redis_hosts, *self.trackers]:
            self.hosts[name] = self.bed.add_host(name, SERVICE_LINK)
        for name in [*self.seeders, *self.peers]:
            self.hosts[name] = self.bed.add_host(name, PEER_LINK)
        work = self.bed.workdir
        primary = self.hosts["r1"].ip
        for name in self.redis_hosts:
            proc = self._proc(f"redis-{name}", name, [], "Ready to accept connections")
            proc.argv_for = lambda name=name: self.redis_argv(name)
            proc.start()
        for proc in [self.procs[f"redis-{h}"] for h in self.redis_hosts]:
            proc.wait_ready()
        for name in self.sentinel_hosts:
            argv = sentinel_config(SENTINEL_PORT, self.hosts[name].ip, (primary, REDIS_PORT), 2, DOWN_AFTER,
                                   FAILOVER_TIMEOUT, work / f"sentinel-{name}")
            self._proc(f"sentinel-{name}", name, argv, "+monitor master").start()
        for name in self.sentinel_hosts:
            self.procs[f"sentinel-{name}"].wait_ready()
        for name in self.trackers:
            self._proc(name, name, [
                command("p2p-tracker"), "--host", self.hosts[name].ip, "--port", str(TRACKER_PORT),
                "--heartbeat-interval", str(HEARTBEAT), "--missed-heartbeats", str(MISSED), "--metrics-port", "0",
                "--registry", self.registry_url, "--registry-timeout", "0.5",
            ], "tracker listening").start()
        for name in self.trackers:
            self.procs[name].wait_ready()
        for name in self.seeders:
            files = [arg for f in self.catalogue for arg in ("-f", str(f))]
            self._proc(name, name, [
                command("p2p-seeder"), *files, "-p", str(SEEDER_PORT), "--tracker", self.tracker_addr,
                "--metrics-port", "0", "--cache-dir", str(work / f"manifests-{name}"),
            ], "registered with tracker").start()
        for name in self.peers:
            disk = Disk(work / f"disk-{name}.img", work / f"disk-{name}", self.disk_bytes).__enter__()
            self.disks[name] = disk
            self._proc(name, name, [
                command("p2p-peer"), "-p", str(PEER_PORT), "--tracker", self.tracker_addr,
                "--cache-dir", str(disk.cache), "--cache-size", str(self.cache_bytes),
                "--http-port", str(GATEWAY_PORT), "--metrics-port", "0", "--wait", str(PEER_WAIT),
            ], "registered with tracker").start()
        for name in [*self.seeders, *self.peers]:
            self.procs[name].wait_ready(120)

    def primary(self) -> str | None:
        """The Redis host the sentinels name as the primary now; None when none answers."""
        for host in self.sentinel_hosts:
            proc = self.procs.get(f"sentinel-{host}")
            if proc is None or proc.pid is None:
                continue
            try:
                answer = subprocess.run(
                    ["ip", "netns", "exec", proc.host.ns, "redis-cli", "-h", proc.host.ip, "-p", str(SENTINEL_PORT),
                     "sentinel", "get-master-addr-by-name", MASTER_NAME], capture_output=True, text=True, timeout=3,
                ).stdout.split()
            except subprocess.TimeoutExpired:  # a frozen host: ask the next
                continue
            for name in self.redis_hosts:
                if answer and answer[0] == self.hosts[name].ip:
                    return name
        return None

    def redis_argv(self, name: str) -> list[str]:
        """A Redis server's command line as the deploy files start it: a replica of the primary
        the sentinels name, the primary if they name this one; on the first start (no sentinel
        yet) r1 is the primary. A server started with the replica's command line of the first
        start, after it had been promoted, would replicate the replica it left behind: no primary."""
        argv = ["redis-server", "--port", str(REDIS_PORT), "--bind", self.hosts[name].ip, "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.bed.workdir)]
        primary = self.primary() or self.redis_hosts[0]
        if primary != name:
            argv += ["--replicaof", self.hosts[primary].ip, str(REDIS_PORT)]
        return argv

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            try:
                proc.stop(5)
            except Exception:  # noqa: BLE001 (whatever is left dies with its namespace)
                pass
        for disk in self.disks.values():
            disk.__exit__()
