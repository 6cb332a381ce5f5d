"""One soak: build the swarm on the testbed, run the workload and the nemesis together for the
run's minutes, sample every process's memory and descriptors, tear everything down, and leave
behind a folder the checker reads alone:

    history.jsonl   the run (first line), every fault with its start and end, every download with
                    its attempts, every sample of a process's RSS and open descriptors, the
                    origin's egress (the seeders' interface counters)
    catalogue.json  the files: name, size, SHA-256
    logs/NAME.log   each process's output, across its restarts

Times are seconds from the run's start (monotonic). A single loop drives everything (every
0.2 s): faults due start, faults over end, downloads due begin, curl processes are polled.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from bench.net.testbed import Testbed

from .hosts import ChaosSwarm
from .nemesis import Fault, Nemesis, schedule
from .workload import MiB, Download, Runner, bound, make_catalogue, plan

WARMUP = 10.0  # seconds of workload before the first fault
SAMPLE_EVERY = 5.0


def quiet_tail(large_bytes: int) -> float:
    """Seconds at the end with no fault and no new download: the last ones finish in it."""
    return 30.0 + large_bytes / (4 * MiB)


class History:
    def __init__(self, path: Path) -> None:
        self.file = open(path, "w")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def sample(proc) -> dict | None:
    pid = proc.pid
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
        state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None
    return {"rss": rss, "fds": fds, "pid": pid, "state": state}


def soak(out: Path, minutes: float, seed: int, large_mib: int, log=print) -> Path:
    """Run one soak into `out` (created); the history's path."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)  # each process appends to its log: this run's only
    (out / "logs").mkdir()
    history = History(out / "history.jsonl")
    with Testbed() as bed:
        catalogue = make_catalogue(bed.workdir / "catalogue", large_mib)
        (out / "catalogue.json").write_text(json.dumps(
            {n: {k: v for k, v in f.items() if k != "path"} for n, f in catalogue.items()}, indent=1))
        total = sum(f["size"] for f in catalogue.values())
        largest = max(f["size"] for f in catalogue.values())
        # Each peer's cache holds about 60% of the catalogue (evictions happen), on a filesystem a
        # little larger than that (so a full disk is the filesystem's, not the cache's, limit).
        cache_bytes = max(int(total * 0.6), largest + 8 * MiB)
        swarm = ChaosSwarm(bed, out / "logs", [Path(f["path"]) for f in catalogue.values()], cache_bytes,
                           cache_bytes + largest + 64 * MiB)
        try:
            log(f"chaos: building the swarm ({len(catalogue)} files, {total / MiB:.0f} MiB; seed {seed}, {minutes:g} min)")
            swarm.build()
            quiet = quiet_tail(largest)
            faults = schedule(seed, minutes, WARMUP, quiet)
            downloads = plan(seed, minutes, WARMUP, quiet, catalogue, swarm.peers)
            seeders_tx = {h: bed.tx_bytes(swarm.hosts[h]) for h in swarm.seeders}
            peers_rx = {h: bed.rx_bytes(swarm.hosts[h]) for h in swarm.peers}
            t0 = time.monotonic()
            history.write({"type": "run", "seed": seed, "minutes": minutes, "large_mib": large_mib, "wall_start": time.time(),
                           "hosts": {n: h.ip for n, h in swarm.hosts.items()}, "warmup": WARMUP, "quiet": quiet,
                           "cache_bytes": cache_bytes, "registry": swarm.registry_url,
                           "processes": sorted(swarm.procs)})
            log(f"chaos: running: {len(faults)} faults, {len(downloads)} downloads")
            _drive(swarm, history, faults, downloads, catalogue, bed.workdir / "downloads", t0, minutes, log)
            history.write({"type": "egress", "seeders_tx": {h: bed.tx_bytes(swarm.hosts[h]) - b for h, b in seeders_tx.items()},
                           "peers_rx": {h: bed.rx_bytes(swarm.hosts[h]) - b for h, b in peers_rx.items()}})
        finally:
            swarm.close()
            history.write({"type": "end", "wall_end": time.time()})
            history.close()
    return out / "history.jsonl"


def _drive(swarm, history, faults: list[Fault], downloads: list[Download], catalogue, folder, t0, minutes, log) -> None:
    nemesis = Nemesis(swarm)
    runner = Runner(swarm, catalogue, folder, t0)
    pending_faults, active = list(faults), []
    pending_downloads = list(downloads)
    last_sample = -SAMPLE_EVERY
    end = minutes * 60
    fault_window = max([f.at + f.duration for f in faults], default=0)
    try:
        while True:
            now = time.monotonic() - t0
            for fault in [f for f in active if f.started + f.duration <= now]:
                nemesis.end(fault)
                fault.ended = time.monotonic() - t0
                active.remove(fault)
                history.write(fault.record())
            while pending_faults and pending_faults[0].at <= now:
                fault = pending_faults.pop(0)
                if nemesis.start(fault):
                    fault.started = time.monotonic() - t0
                    active.append(fault)
                    log(f"chaos: {fault.started:7.1f}s {fault.kind} {fault.target} for {fault.duration:.1f}s")
                    if fault.kind == "bitrot":
                        # The rotten file is read a second later: on its host (from the cache) and
                        # on another (which may fetch chunks from it).
                        name, other = fault.detail["damaged"]["name"], swarm.peers[int(fault.choice * 7 + 1) % 8]
                        for host in dict.fromkeys([fault.target, other]):
                            extra = Download(len(downloads), host, name, now + 1, False, give_up=3 * bound(catalogue[name]["size"]))
                            downloads.append(extra)
                            pending_downloads.append(extra)
                        pending_downloads.sort(key=lambda d: d.at)
                elif now + 1 < fault_window:
                    # No free target (a Redis fault on, every candidate busy): a second later.
                    fault.at = now + 1
                    pending_faults.append(fault)
                    pending_faults.sort(key=lambda f: f.at)
                    break
            while pending_downloads and pending_downloads[0].at <= now:
                runner.begin(pending_downloads.pop(0))
            for download in runner.poll():
                history.write(download.record())
                if download.status != "ok":
                    log(f"chaos: {now:7.1f}s download {download.id} of {download.name} at {download.host} given up: "
                        f"{download.attempts[-1].get('error')}")
            for name, proc in swarm.procs.items():
                code = proc.exited()
                if code is not None:  # restarted, as Compose's and Kubernetes' restart policies would
                    history.write({"type": "exit", "t": round(now, 2), "proc": name, "code": code})
                    log(f"chaos: {now:7.1f}s {name} exited ({code}) unasked; started again")
                    proc.start()
            if now - last_sample >= SAMPLE_EVERY:
                last_sample = now
                for name, proc in swarm.procs.items():
                    found = sample(proc)
                    if found:
                        history.write({"type": "sample", "t": round(now, 2), "proc": name, **found})
            if now >= end and not active and not runner.busy and not pending_downloads:
                break
            if now >= end + 600:  # a download that never ends: recorded as given up
                break
            time.sleep(0.2)
    finally:
        for fault in active:
            nemesis.end(fault)
            fault.ended = time.monotonic() - t0
            history.write(fault.record())
        for download in runner.abandon():
            history.write(download.record())
        for download in pending_downloads:
            download.status = "not started"
            history.write(download.record())
