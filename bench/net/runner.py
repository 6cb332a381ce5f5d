"""One scenario on a fresh testbed, with our services or with libtorrent.

Our services run with the command lines users type (`p2p-tracker`, `p2p-seeder`, `p2p-leecher`
from this environment's bin folder) inside `ip netns exec`. Every leecher is started at one
moment, t0; a leecher's time is from t0 to its exit after a verified, fsynced file (ours) or to
its report of holding the whole file (libtorrent). Bytes sent are each host's eth0 tx_bytes
over the run, so the figure trusts none of our code; every copy is checked by SHA-256 at the end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.localswarm import Service, sha256_file

from .scenarios import Scenario
from .testbed import Host, Link, Testbed

LT_PYTHON = "/usr/bin/python3"  # Debian's python3-libtorrent is built for it, not for ours
LT_PEER = Path(__file__).with_name("lt_peer.py")
TRACKER_PORT, SEEDER_PORT, LT_PORT = 6969, 7000, 6881
TRACKER_LINK = Link(100e6, 100e6)


def command(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def libtorrent_missing() -> str | None:
    probe = subprocess.run([LT_PYTHON, "-c", "import libtorrent"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"no libtorrent for {LT_PYTHON} (apt-get install python3-libtorrent)"


def make_torrent(source: Path) -> dict:
    out = source.with_suffix(".torrent")
    made = subprocess.run([LT_PYTHON, str(LT_PEER), "torrent", str(source), str(out)],
                          capture_output=True, text=True, timeout=120, check=True)
    return {"path": str(out), **json.loads(made.stdout)}


class Swarm:
    """Our services on a testbed: a tracker host, then seeders and leechers as asked."""

    def __init__(self, bed: Testbed, heartbeat: float = 2.0) -> None:
        self.bed = bed
        self.env = {"P2P_LOG_FORMAT": "json"}
        self.tracker = bed.add_host("tracker", TRACKER_LINK)
        self.tracker_addr = f"{self.tracker.ip}:{TRACKER_PORT}"
        bed.start(self.tracker, [command("p2p-tracker"), "--host", self.tracker.ip, "--port", str(TRACKER_PORT),
                                 "--heartbeat-interval", str(heartbeat), "--metrics-port", "0"], self.env,
                  ).wait_for("tracker listening")

    def seeder(self, host: Host, source: Path, *args: str, wait: bool = True) -> Service:
        seeder = self.bed.start(host, [
            command("p2p-seeder"), "-f", str(source), "-p", str(SEEDER_PORT), "--tracker", self.tracker_addr,
            "--metrics-port", "0", "--cache-dir", str(self.bed.workdir / f"cache-{host.name}"), *args,
        ], self.env)
        if wait:
            seeder.wait_for("registered with tracker", timeout=60)
        return seeder

    def leecher(self, host: Host, name: str, min_seeders: int, *args: str) -> Service:
        return self.bed.start(host, [
            command("p2p-leecher"), name, "--tracker", self.tracker_addr, "-o", str(self.output(host)),
            "--min-seeders", str(min_seeders), "--progress", "log", "--metrics-port", "0", *args,
        ], self.env)

    def peer(self, host: Host, *args: str, http_port: int = 7080, wait: bool = True) -> Service:
        """A per-host peer (p2p-peer), its cache in the run's folder, its gateway on the host's
        address (`--http-host`) or on loopback."""
        peer = self.bed.start(host, [
            command("p2p-peer"), "-p", str(SEEDER_PORT), "--tracker", self.tracker_addr,
            "--cache-dir", str(self.bed.workdir / f"peer-{host.name}"), "--http-port", str(http_port),
            "--metrics-port", "0", *args,
        ], self.env)
        if wait:
            peer.wait_for("registered with tracker", timeout=60)
        return peer

    def output(self, host: Host) -> Path:
        return self.bed.workdir / f"out-{host.name}"


GATEWAY = "http://127.0.0.1:7080/files/"


def run(scenario: Scenario, system: str, source: Path, torrent: Path | None = None) -> dict:
    """Time to all, per-leecher times, bytes each host sent; raises only when the testbed fails.

    `p2p`: a leecher process per host, started at t0. `p2p-peer`: a running per-host peer on
    every host (started and registered before t0), and at t0 `curl` on each host fetching the
    file through its own peer's gateway; a host is done when curl has the whole answer."""
    expected_sha = sha256_file(source)
    with Testbed() as bed:
        swarm = Swarm(bed) if system in ("p2p", "p2p-peer") else None
        seeders = [bed.add_host(f"s{i}", link) for i, link in enumerate(scenario.seeders, 1)]
        leechers = [bed.add_host(f"l{i}", link) for i, link in enumerate(scenario.leechers, 1)]
        hosts = ([swarm.tracker] if swarm else []) + seeders + leechers
        if swarm:
            seeding = [swarm.seeder(h, source, wait=False) for h in seeders]
            for s in seeding:
                s.wait_for("registered with tracker", timeout=60)
        else:
            seeding = [_lt_peer(bed, h, torrent, source.parent, [], seed=True) for h in seeders]
            for s in seeding:
                s.wait_for("ready", timeout=60)
        daemons = []
        if system == "p2p-peer":
            daemons = [swarm.peer(h, wait=False) for h in leechers]
            for d in daemons:
                d.wait_for("registered with tracker", timeout=60)
        sent_before = {h.name: bed.tx_bytes(h) for h in hosts}
        received_before = sum(bed.rx_bytes(h) for h in leechers)

        t0 = time.monotonic()
        if system == "p2p-peer":
            outputs = [swarm.output(h) / source.name for h in leechers]
            for output in outputs:
                output.parent.mkdir(parents=True, exist_ok=True)
            peers = [bed.start(h, ["curl", "-sS", "--fail", "-o", str(out), GATEWAY + source.name], label=f"curl-{h.name}")
                     for h, out in zip(leechers, outputs)]
        elif swarm:
            peers = [swarm.leecher(h, source.name, len(seeders)) for h in leechers]
            outputs = [swarm.output(h) / source.name for h in leechers]
        else:
            peers = [
                _lt_peer(bed, h, torrent, bed.workdir / f"out-{h.name}", [*seeders, *leechers[:i]])
                for i, h in enumerate(leechers)
            ]
            outputs = [bed.workdir / f"out-{h.name}" / source.name for h in leechers]
        finished, killed_at = _await_leechers(bed, scenario, system, peers, seeding, leechers, received_before, t0)
        sent = {h.name: bed.tx_bytes(h) - sent_before[h.name] for h in hosts}
        for peer in [*peers, *daemons]:
            peer.stop(timeout=10)
        failures = []
        for host, peer, output in zip(leechers, peers, outputs):
            if host.name not in finished:
                failures.append(f"{host.name} did not finish: {peer.lines[-1] if peer.lines else 'no output'}")
            elif sha256_file(output) != expected_sha:
                failures.append(f"{host.name}: its copy differs from the file")
        seeder_egress = sum(sent[h.name] for h in seeders)
        return {
            "completion_seconds": finished,
            "time_to_all": max(finished.values()) if not failures else None,
            "all_exact": not failures,
            "failures": failures,
            "bytes_sent": sent,
            "seeder_egress_bytes": seeder_egress,
            "seeder_egress_over_file": seeder_egress / scenario.size,
            "leecher_upload_bytes": sum(sent[h.name] for h in leechers),
            **({"seeder_killed_at_seconds": killed_at} if killed_at is not None else {}),
        }


def _lt_peer(bed: Testbed, host: Host, torrent: Path, folder: Path, connect: list[Host], seed: bool = False) -> Service:
    folder.mkdir(parents=True, exist_ok=True)
    argv = [LT_PYTHON, str(LT_PEER), "peer", str(torrent), str(folder), f"{host.ip}:{LT_PORT}"]
    argv += ["--seed"] * seed + ["--connect", *(f"{h.ip}:{LT_PORT}" for h in connect)] * bool(connect)
    return bed.start(host, argv)


def _await_leechers(bed, scenario, system, peers, seeding, leechers, received_before, t0):
    """Poll until every leecher is done, failed or out of time; SIGKILL seeder 1 when asked."""
    finished: dict[str, float] = {}
    failed: set[str] = set()
    killed_at = None
    # Generous: three times the no-sharing bound, plus start-up.
    deadline = t0 + 3 * scenario.bound_without_sharing() + 30
    while len(finished) + len(failed) < len(peers) and time.monotonic() < deadline:
        for host, peer in zip(leechers, peers):
            if host.name in finished or host.name in failed:
                continue
            if system in ("p2p", "p2p-peer"):
                code = peer.proc.poll()
                if code == 0:
                    finished[host.name] = time.monotonic() - t0
                elif code is not None:
                    failed.add(host.name)
            else:
                done = [e for e in peer.events() if e.get("event") == "finished"]
                if done:
                    finished[host.name] = done[0]["t"] - t0
                elif peer.proc.poll() is not None:
                    failed.add(host.name)
        if scenario.kill_seeder_at is not None and killed_at is None:
            received = sum(bed.rx_bytes(h) for h in leechers) - received_before
            if received >= scenario.kill_seeder_at * scenario.size * len(leechers):
                seeding[0].proc.send_signal(signal.SIGKILL)
                killed_at = time.monotonic() - t0
        time.sleep(0.05)
    return finished, killed_at
