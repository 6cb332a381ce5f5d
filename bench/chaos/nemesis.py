"""The nemesis: a fault schedule drawn from a seed (pure: the same seed, the same schedule), and
the hands that apply and undo each fault on the soak's hosts.

Kinds (`KINDS`), each with a start and an end in the history:
  kill            SIGKILL a peer, a seeder or a tracker replica; started again at the end
  stop            SIGSTOP one of them (a host gone without a word); SIGCONT at the end
  partition       a host off the switch (its port down), links back up at the end
  partition_some  a host cut from some others (blackhole routes to their addresses in it)
  slow            a host's link at 1% of its rate both ways
  redis_failover  the Redis primary SIGKILLed: Sentinel promotes the replica; the old primary
                  started again (empty) at the end, and the sentinels make it a replica
  redis_empty     the primary killed and started again at once, empty, before Sentinel acts:
                  its replica copies the empty registry; holders register again
  redis_stall     the primary SIGSTOPped (longer than Sentinel's down-after: a failover too)
  disk_full       a peer's cache filesystem filled (a ballast file), freed at the end
  bitrot          bytes of a complete file in a peer's cache flipped (at once; the end is the start)
  clock           a peer or seeder started again under libfaketime with its wall clock stepped
                  an hour (or running twice as fast, monotonic clock too), or a tracker replica's
                  stepped by a second; started again with the true clock at the end
Faults overlap (several at once), except that one Redis fault runs at a time and a process
is the target of one fault at a time.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.net.testbed import _tbf, sh

from .hosts import ChaosSwarm, PEER_LINK, SERVICE_LINK

KINDS = ("kill", "stop", "partition", "partition_some", "slow", "redis_failover", "redis_empty", "redis_stall",
         "disk_full", "bitrot", "clock")
REDIS_KINDS = {"redis_failover", "redis_empty", "redis_stall"}
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@dataclass
class Fault:
    kind: str
    at: float  # seconds from the run's start
    duration: float
    choice: float  # a draw in [0, 1) that picks the target among those free when it starts
    target: str | None = None  # filled in when it starts
    detail: dict = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None

    def record(self) -> dict:
        return {"type": "fault", **{k: v for k, v in asdict(self).items() if k not in ("choice",)}}


def schedule(seed: int, minutes: float, warmup: float, quiet: float) -> list[Fault]:
    """Faults from `warmup` to `minutes * 60 - quiet` seconds: every kind once first (in a
    random order), then kinds at random; the gap and the length of each drawn from the seed."""
    rng = random.Random(f"nemesis-{seed}")
    window_end = minutes * 60 - quiet
    span = window_end - warmup
    # Short runs pack the kinds in; long ones spread faults out, about one every 25 s.
    gap = min(25.0, span / (len(KINDS) + 1))
    longest = max(4.0, min(40.0, 2.5 * gap))
    kinds = list(KINDS)
    rng.shuffle(kinds)
    first_round = min(span, gap * 1.2 * len(KINDS))  # every kind once, in slots of this window
    slot = first_round / len(KINDS)
    faults = []

    def add(kind: str, at: float) -> None:
        duration = 0.0 if kind == "bitrot" else rng.uniform(0.25, 1.0) * longest
        if kind in ("redis_stall", "redis_failover"):
            duration = max(duration, 4.0)  # past Sentinel's down-after: the failover happens
        faults.append(Fault(kind, round(at, 3), round(min(duration, window_end - at), 3), rng.random()))

    for i, kind in enumerate(kinds):
        add(kind, warmup + (i + rng.uniform(0.0, 0.5)) * slot)
    at = warmup + first_round
    while True:
        at += rng.uniform(0.4, 1.6) * gap
        if at > window_end - 2:
            break
        add(rng.choice(KINDS), at)
    return faults


class Nemesis:
    """Applies and undoes faults on a ChaosSwarm; knows which targets are busy."""

    def __init__(self, swarm: ChaosSwarm) -> None:
        self.swarm = swarm
        self.busy: set[str] = set()
        self.redis_busy = False

    # --- choosing -------------------------------------------------------------------------------

    def _pick(self, candidates: list[str], choice: float) -> str | None:
        free = [c for c in candidates if c not in self.busy]
        return free[int(choice * len(free))] if free else None

    def primary(self) -> str:
        """The Redis host the sentinels name as the primary now (r1 if none answers)."""
        return self.swarm.primary() or self.swarm.redis_hosts[0]

    # --- applying -------------------------------------------------------------------------------

    def start(self, fault: Fault) -> bool:
        """Apply the fault now; False when it has no free target (skipped, not recorded)."""
        s = self.swarm
        services = [*s.peers, *s.seeders, *s.trackers]
        kind = fault.kind
        if kind in REDIS_KINDS:
            if self.redis_busy:
                return False
            target = self.primary()
        elif kind in ("kill", "stop"):
            target = self._pick(services, fault.choice)
        elif kind in ("partition", "partition_some", "slow"):
            target = self._pick([*s.peers, *s.seeders, *s.trackers, *s.redis_hosts], fault.choice)
        elif kind == "disk_full":
            target = self._pick(s.peers, fault.choice)
        elif kind == "bitrot":  # a peer with a complete file in its cache
            target = self._pick([p for p in s.peers if self._cached(p)], fault.choice)
        elif kind == "clock":
            target = self._pick([*s.peers, *s.seeders, *s.trackers], fault.choice)
        else:
            raise ValueError(kind)
        if target is None:
            return False
        fault.target = target
        getattr(self, f"_start_{kind}")(fault)
        if kind in REDIS_KINDS:
            self.redis_busy = True
        elif kind != "bitrot":
            self.busy.add(target)
        return True

    def end(self, fault: Fault) -> None:
        getattr(self, f"_end_{fault.kind}")(fault)
        if fault.kind in REDIS_KINDS:
            self.redis_busy = False
        self.busy.discard(fault.target)

    # kill and stop
    def _start_kill(self, fault: Fault) -> None:
        self.swarm.procs[fault.target].kill()

    def _end_kill(self, fault: Fault) -> None:
        self.swarm.procs[fault.target].start()

    def _start_stop(self, fault: Fault) -> None:
        self.swarm.procs[fault.target].signal(signal.SIGSTOP)

    def _end_stop(self, fault: Fault) -> None:
        self.swarm.procs[fault.target].signal(signal.SIGCONT)

    # the network
    def _start_partition(self, fault: Fault) -> None:
        self.swarm.bed.cut(self.swarm.hosts[fault.target])

    def _end_partition(self, fault: Fault) -> None:
        self.swarm.bed.heal(self.swarm.hosts[fault.target])

    def _start_partition_some(self, fault: Fault) -> None:
        others = [h for h in self.swarm.hosts if h != fault.target]
        rng = random.Random(fault.choice)
        cut = sorted(rng.sample(others, rng.randint(1, max(1, len(others) // 2))))
        fault.detail["from"] = cut
        host = self.swarm.hosts[fault.target]
        for name in cut:
            sh("ip", "netns", "exec", host.ns, "ip", "route", "add", "blackhole", f"{self.swarm.hosts[name].ip}/32")

    def _end_partition_some(self, fault: Fault) -> None:
        host = self.swarm.hosts[fault.target]
        for name in fault.detail["from"]:
            sh("ip", "netns", "exec", host.ns, "ip", "route", "del", "blackhole", f"{self.swarm.hosts[name].ip}/32", check=False)

    def _shape(self, name: str, fraction: float) -> None:
        host = self.swarm.hosts[name]
        link = SERVICE_LINK if name in (*self.swarm.redis_hosts, *self.swarm.trackers) else PEER_LINK
        bed = self.swarm.bed
        sh("ip", "netns", "exec", host.ns, "tc", "qdisc", "change", "dev", "eth0", "root", *_tbf(link.up * fraction))
        sh("ip", "netns", "exec", bed.switch, "tc", "qdisc", "change", "dev", name, "root", *_tbf(link.down * fraction))

    def _start_slow(self, fault: Fault) -> None:
        fault.detail["rate_fraction"] = 0.01
        self._shape(fault.target, 0.01)

    def _end_slow(self, fault: Fault) -> None:
        self._shape(fault.target, 1.0)

    # Redis
    def _redis(self, name: str):
        return self.swarm.procs[f"redis-{name}"]

    def _start_redis_failover(self, fault: Fault) -> None:
        self._redis(fault.target).kill()

    def _end_redis_failover(self, fault: Fault) -> None:
        self._redis(fault.target).start()  # empty; the sentinels make it a replica of the new primary
        fault.detail["primary_after"] = self.primary()

    def _start_redis_empty(self, fault: Fault) -> None:
        proc = self._redis(fault.target)
        proc.kill()
        proc.start()  # back within Sentinel's down-after, empty: its replica copies that
        fault.detail["primary_after"] = fault.target

    def _end_redis_empty(self, fault: Fault) -> None:
        pass

    def _start_redis_stall(self, fault: Fault) -> None:
        self._redis(fault.target).signal(signal.SIGSTOP)

    def _end_redis_stall(self, fault: Fault) -> None:
        self._redis(fault.target).signal(signal.SIGCONT)
        fault.detail["primary_after"] = self.primary()

    # disks
    def _start_disk_full(self, fault: Fault) -> None:
        fault.detail["bytes"] = self.swarm.disks[fault.target].fill()

    def _end_disk_full(self, fault: Fault) -> None:
        self.swarm.disks[fault.target].free()

    def _start_bitrot(self, fault: Fault) -> None:
        """Flip 16 bytes in the middle of a complete file in the peer's cache (one folder per
        file id: its manifest and the file), keeping its size and mtime as a disk's rot would."""
        files = self._cached(fault.target)
        victim = files[int(fault.choice * len(files))]
        stat = victim.stat()
        offset = stat.st_size // 2
        with open(victim, "r+b") as f:
            f.seek(offset)
            good = f.read(16)
            f.seek(offset)
            f.write(bytes(b ^ 0xFF for b in good))
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        fault.detail["damaged"] = {"file": victim.parent.name, "name": victim.name, "offset": offset}

    def _cached(self, peer: str) -> list[Path]:
        """The complete files in a peer's cache (CACHE/files/<file id>/<name>, beside `manifest`,
        `identity` and a download's `<name>.part`)."""
        cache = self.swarm.disks[peer].cache
        return sorted(p for p in cache.glob("files/*/*") if p.is_file() and p.suffix != ".part"
                      and p.name not in ("manifest", "identity") and p.stat().st_size > 4096)

    def _end_bitrot(self, fault: Fault) -> None:
        pass

    # clocks
    def _start_clock(self, fault: Fault) -> None:
        s = self.swarm
        if fault.target in s.trackers:
            offset = "+1s" if fault.choice < 0.5 else "-1s"
        else:
            offset = ("+1h", "-1h", "+0 x2")[int(fault.choice * 3)]
        fault.detail["faketime"] = offset
        proc = s.procs[fault.target]
        proc.stop()
        proc.env = {"LD_PRELOAD": FAKETIME, "FAKETIME": offset, "FAKETIME_NO_CACHE": "1"}
        proc.start()

    def _end_clock(self, fault: Fault) -> None:
        proc = self.swarm.procs[fault.target]
        proc.stop()
        proc.env = {}
        proc.start()


def clock_fault_available() -> str | None:
    """Why the clock fault cannot run here, or None."""
    if not Path(FAKETIME).exists():
        return f"no libfaketime ({FAKETIME}): apt-get install faketime"
    return None

