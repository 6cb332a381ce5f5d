"""The workload: a catalogue of files of mixed sizes, and a stream of downloads drawn from a seed,
each read with curl through the gateway of the host's own p2p-peer, as a program on that host would.

A download is what a user asks for: it is tried until it has the exact file, again after 2 s when
an attempt fails (the peer killed under it, the answer cut short, an error), and given up after
`give_up` seconds. Every attempt is recorded (its exit, HTTP status, the one line it failed with);
a finished file is hashed and removed at once, so the soak does not fill the disk. Before most
downloads the host's peer is told to drop the file from its cache (DELETE), so the bytes come
through the swarm again rather than from that host's own disk.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tools.localswarm import random_file, sha256_file

from .hosts import GATEWAY_PORT, ChaosSwarm

MiB = 1 << 20
RETRY_AFTER = 2.0


def catalogue_sizes(large_mib: int) -> list[int]:
    """Mixed sizes: many small, a few medium, one or two large (`large_mib`)."""
    return [256 << 10, 1 * MiB, 3 * MiB + 12345, 8 * MiB, 24 * MiB, max(32, large_mib // 4) * MiB, large_mib * MiB,
            *([(large_mib + 64) * MiB] if large_mib >= 256 else [])]


def make_catalogue(folder: Path, large_mib: int) -> dict[str, dict]:
    """Random files (not from the seed: the bytes matter only by their SHA-256); name -> size, sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, size in enumerate(catalogue_sizes(large_mib), 1):
        path = random_file(folder / f"f{i:02d}-{size >> 10}KiB.bin", size)
        files[path.name] = {"path": str(path), "size": size, "sha256": sha256_file(path)}
    return files


def bound(size: int) -> float:
    """Seconds a download may take after the last fault that touched it, and why: a Sentinel
    failover (2 s down-after, an election) and the holders' re-registration (one 2 s heartbeat)
    take under 15 s; a peer gives up on holders gone silent after its --wait (20 s), and the
    retry comes 2 s later; then the bytes, at no less than 2 MiB/s (the links carry 12.5 MB/s
    and a download shares its uplinks and the 2 cores with several others)."""
    return 45.0 + size / (2 * MiB)


@dataclass
class Download:
    id: int
    host: str
    name: str
    at: float  # seconds from the run's start it is due
    drop_first: bool  # DELETE the file from the host's cache first
    give_up: float = 0.0
    started: float | None = None
    ended: float | None = None
    status: str = "pending"  # ok, failed (given up), pending
    sha256: str | None = None
    attempts: list[dict] = field(default_factory=list)

    def record(self) -> dict:
        return {"type": "download", **asdict(self)}


def plan(seed: int, minutes: float, warmup: float, quiet: float, catalogue: dict[str, dict], hosts: list[str]) -> list[Download]:
    """Downloads from `warmup` to `minutes * 60 - quiet`: about one every 1.5 s, at random hosts and
    moments; a third of them bursts of 2 to 4 hosts asking for one file at once. Small files
    are asked for more often than large ones (by the inverse square root of their size)."""
    rng = random.Random(f"workload-{seed}")
    names = sorted(catalogue)
    weights = [catalogue[n]["size"] ** -0.5 for n in names]
    downloads, at, end = [], warmup, minutes * 60 - quiet
    while True:
        at += rng.expovariate(1 / 1.5)
        if at > end:
            break
        name = rng.choices(names, weights)[0]
        burst = rng.sample(hosts, rng.randint(2, 4)) if rng.random() < 1 / 3 else [rng.choice(hosts)]
        for host in burst:
            downloads.append(Download(len(downloads), host, name, round(at, 3), rng.random() < 0.7,
                                      give_up=bound(catalogue[name]["size"]) * 3))
    # The large files at least once each, so every size is exercised even in a short run.
    for name in names:
        if not any(d.name == name for d in downloads):
            at = warmup + rng.random() * (end - warmup) / 2
            downloads.append(Download(len(downloads), rng.choice(hosts), name, round(at, 3), True,
                                      give_up=bound(catalogue[name]["size"]) * 3))
    downloads.sort(key=lambda d: d.at)
    return downloads


class Runner:
    """Runs downloads as curl processes in their hosts' namespaces; `poll` advances them."""

    def __init__(self, swarm: ChaosSwarm, catalogue: dict[str, dict], folder: Path, t0: float) -> None:
        self.swarm, self.catalogue, self.folder, self.t0 = swarm, catalogue, folder, t0
        self.running: dict[int, tuple[Download, subprocess.Popen, Path, float]] = {}
        self.waiting: dict[int, tuple[Download, float]] = {}  # retry due at
        self.file_ids: dict[str, str] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _curl(self, host: str, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        ns = self.swarm.hosts[host].ns
        return subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", *args], capture_output=True, text=True, timeout=timeout)

    def begin(self, download: Download) -> None:
        download.started = self.now()
        if download.drop_first and download.name in self.file_ids:
            try:  # 204 dropped, 404 not there, 409 being read: each is fine; a dead peer too
                self._curl(download.host, "-o", "/dev/null", "-X", "DELETE", "--max-time", "5",
                           f"http://127.0.0.1:{GATEWAY_PORT}/files/{self.file_ids[download.name]}")
            except subprocess.TimeoutExpired:
                pass
        self._attempt(download)

    def _attempt(self, download: Download) -> None:
        out = self.folder / f"d{download.id}-{len(download.attempts)}"
        ns = self.swarm.hosts[download.host].ns
        remaining = max(5.0, download.started + download.give_up - self.now())
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "curl", "-sS", "-o", str(out), "-D", f"{out}.headers", "-w", "%{http_code}",
             "--max-time", f"{remaining:.0f}", f"http://127.0.0.1:{GATEWAY_PORT}/files/{download.name}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.running[download.id] = (download, proc, out, self.now())

    def poll(self) -> list[Download]:
        """Advance every download; the ones that ended (ok or given up) now."""
        ended = []
        for key, (download, proc, out, began) in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[key]
            stdout, stderr = proc.communicate()
            attempt = {"start": began, "end": self.now(), "curl_exit": proc.returncode, "http": stdout.strip()}
            if proc.returncode == 0 and attempt["http"] == "200":
                digest = sha256_file(out)
                attempt["sha256"] = digest
                etag = _header(Path(f"{out}.headers"), "etag")
                if etag:
                    self.file_ids[download.name] = etag.strip('"')
                download.attempts.append(attempt)
                download.sha256, download.status, download.ended = digest, "ok", self.now()
                ended.append(download)
            else:
                attempt["error"] = _error_line(out, stderr)
                download.attempts.append(attempt)
                if self.now() + RETRY_AFTER < download.started + download.give_up:
                    self.waiting[key] = (download, self.now() + RETRY_AFTER)
                else:
                    download.status, download.ended = "failed", self.now()
                    ended.append(download)
            out.unlink(missing_ok=True)
            Path(f"{out}.headers").unlink(missing_ok=True)
        for key, (download, due) in list(self.waiting.items()):
            if self.now() >= due:
                del self.waiting[key]
                self._attempt(download)
        return ended

    @property
    def busy(self) -> int:
        return len(self.running) + len(self.waiting)

    def abandon(self) -> list[Download]:
        """At the end of the run: what is still going is recorded as given up."""
        left = []
        for download, proc, out, began in self.running.values():
            proc.kill()
            proc.wait()
            download.attempts.append({"start": began, "end": self.now(), "curl_exit": None, "http": "",
                                      "error": "still running when the soak ended"})
            out.unlink(missing_ok=True)
            Path(f"{out}.headers").unlink(missing_ok=True)
            left.append(download)
        left += [d for d, _ in self.waiting.values()]
        for download in left:
            download.status, download.ended = "failed", self.now()
        self.running.clear()
        self.waiting.clear()
        return left


def _header(path: Path, name: str) -> str | None:
    try:
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
    except OSError:
        pass
    return None


def _error_line(out: Path, stderr: str) -> str:
    """The one line a failed attempt gave: the gateway's JSON error, else curl's."""
    try:
        body = out.read_bytes()[:4096]
        error = json.loads(body)
        if isinstance(error, dict) and "message" in error:
            return f"{error.get('code')}: {error['message']}"
    except (OSError, ValueError):
        pass
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"

