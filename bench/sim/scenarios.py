"""What the simulator runs: hosts with links, a file, arrivals and departures; one line each.

The bound is Kumar and Ross's fluid-model minimum time for every leecher to hold the file, in its
general form for heterogeneous hosts, the seeders' uplinks summed as the server's (u_s):

    T_min = max(F / u_s, F / d_min, N * F / (u_s + sum(u_i)))

With staggered arrivals no leecher can finish before it arrives and fills its downlink, so the
bound is also at least max_i(a_i + F / min(d_i, u_s)). For a group of hosts (the fast ones
among slow ones), the same with the group's N and d_min and everyone's uplinks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MiB = 1 << 20
KiB = 1 << 10
Mbit = 1e6


@dataclass(frozen=True)
class HostSpec:
    up: float  # bits per second
    down: float
    delay: float = 0.0005  # seconds, this host's share of a one-way delay (A to B: A's plus B's)
    arrive: float = 0.0  # seconds after the start (leechers)
    leaves_at: float | None = None  # seconds after arriving: leaves, unfinished or not (graceful)
    dies_at: float | None = None  # seconds after the start: SIGKILLed (the tracker is not told)
    lies: bool = False  # every chunk it serves fails verification
    slow: bool = False  # for the report: one of the slow hosts


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    seeders: tuple[HostSpec, ...]
    leechers: tuple[HostSpec, ...]
    size: int = 64 * MiB
    chunk_size: int = 512 * KiB
    tracker_delay: float = 0.0005
    startup_s: float = 0.0  # from a leecher's arrival to its first lookup (a process starting)
    leave_on_complete: bool = False  # leechers exit once their file is verified (p2p-leecher)
    kill_origin_at: float | None = None  # seeder 1 is SIGKILLed once the leechers hold this fraction
    readers: bool = False  # each leecher's file is read in order as it comes (curl through p2p-peer's gateway)

    def bound(self) -> float:
        return bound(self.size, self.seeders, self.leechers)

    def bound_without_sharing(self) -> float:
        bits, n = self.size * 8, len(self.leechers)
        u_s = sum(h.up for h in self.seeders)
        return max(n * bits / u_s, max(h.arrive + bits / min(h.down, u_s) for h in self.leechers))

    def with_(self, **changes) -> Scenario:
        return replace(self, **changes)


def bound(size: int, seeders, leechers, everyone=None) -> float:
    """Kumar–Ross for `leechers` (a group of `everyone`, whose uplinks all help)."""
    everyone = leechers if everyone is None else everyone
    bits, n = size * 8, len(leechers)
    u_s = sum(h.up for h in seeders)
    d_min = min(h.down for h in leechers)
    arrivals = max(h.arrive + bits / min(h.down, u_s) for h in leechers)
    return max(bits / u_s, bits / d_min, n * bits / (u_s + sum(h.up for h in everyone)), arrivals)


def _host(mbit: float, latency_ms: float, **kw) -> HostSpec:
    return HostSpec(mbit * Mbit, mbit * Mbit, delay=latency_ms / 2000, **kw)


def one_to_many(n: int, mbit: float = 100, size_mib: float = 64, chunk_kib: int = 512, latency_ms: float = 1.0,
                seeders: int = 1, seeder_mbit: float | None = None) -> Scenario:
    seeder = _host(seeder_mbit or mbit, latency_ms)
    return Scenario(f"{seeders}_to_{n}", f"{seeders} seeder{'s' * (seeders > 1)} → {n} peers, {mbit:g} Mbit/s each way",
                    (seeder,) * seeders, (_host(mbit, latency_ms),) * n, int(size_mib * MiB), chunk_kib * KiB,
                    tracker_delay=latency_ms / 2000)


def heterogeneous(n: int, mbit: float = 100, slow_share: float = 0.2, slow_factor: float = 10, **kw) -> Scenario:
    """A share of the peers at a fraction of the others' speed, each way."""
    base = one_to_many(n, mbit, **kw)
    slow = round(n * slow_share)
    latency_ms = base.leechers[0].delay * 2000
    hosts = tuple(_host(mbit / slow_factor, latency_ms, slow=True) if i < slow else _host(mbit, latency_ms) for i in range(n))
    return base.with_(name=f"heterogeneous_{n}", title=f"1 seeder → {n} peers, {slow} of them at {mbit / slow_factor:g} Mbit/s, "
                      f"the others at {mbit:g}", leechers=hosts)


def flash_crowd(n: int, over_s: float = 10, mbit: float = 100, **kw) -> Scenario:
    """Peers arriving evenly over `over_s` seconds."""
    base = one_to_many(n, mbit, **kw)
    hosts = tuple(replace(h, arrive=over_s * i / max(1, n - 1)) for i, h in enumerate(base.leechers))
    return base.with_(name=f"flash_crowd_{n}", title=f"1 seeder → {n} peers arriving over {over_s:g} s, {mbit:g} Mbit/s",
                      leechers=hosts)


def churn(n: int, mbit: float = 100, leave_share: float = 0.1, leave_after: float = 3.0, origin_dies_at: float | None = None,
          **kw) -> Scenario:
    """Peers leave once done; a share leave mid-download (`leave_after` seconds after arriving);
    two origins, one may die."""
    base = one_to_many(n, mbit, seeders=2, **kw)
    leaving = round(n * leave_share)
    hosts = tuple(replace(h, leaves_at=leave_after) if i < leaving else h for i, h in enumerate(base.leechers))
    seeders = (replace(base.seeders[0], dies_at=origin_dies_at), base.seeders[1])
    return base.with_(name=f"churn_{n}", title=f"2 seeders → {n} peers that leave when done, {leaving} after {leave_after:g} s"
                      + (f", seeder 1 SIGKILLed at {origin_dies_at:g} s" if origin_dies_at else ""),
                      leechers=hosts, seeders=seeders, leave_on_complete=True)


def lying_peer(n: int, liars: int = 1, mbit: float = 100, **kw) -> Scenario:
    """Peers whose every chunk fails verification."""
    base = one_to_many(n, mbit, **kw)
    hosts = tuple(replace(h, lies=True) if i < liars else h for i, h in enumerate(base.leechers))
    return base.with_(name=f"lying_peer_{n}", title=f"1 seeder → {n} peers, {liars} of them serving bad chunks", leechers=hosts)


def from_testbed(scenario, startup_s: float = 0.0, leave_on_complete: bool = True, readers: bool = False) -> Scenario:
    """A `make bench-net` scenario (bench/net/scenarios.py), its links as they are shaped there."""
    def spec(link) -> HostSpec:
        # The testbed's veths with no netem: about 0.1 ms each way, plus its round trip if shaped.
        return HostSpec(link.up, link.down, delay=0.00005 + link.rtt_ms / 4000)
    return Scenario(
        f"net:{scenario.name}", scenario.title, tuple(spec(l) for l in scenario.seeders),
        tuple(spec(l) for l in scenario.leechers), scenario.size, 512 * KiB, tracker_delay=0.00005,
        startup_s=startup_s, leave_on_complete=leave_on_complete, kill_origin_at=scenario.kill_seeder_at, readers=readers,
    )


NAMED = {
    "one_to_1000": lambda: one_to_many(1_000, mbit=100),
    "one_to_10000": lambda: one_to_many(10_000, mbit=100),
    "heterogeneous_1000": lambda: heterogeneous(1_000, mbit=100, slow_share=0.2, slow_factor=10),
    "flash_crowd_1000": lambda: flash_crowd(1_000, over_s=10, mbit=100),
    "churn_1000": lambda: churn(1_000, mbit=100, leave_share=0.1, origin_dies_at=5.0),
    "lying_peer_100": lambda: lying_peer(100, liars=5, mbit=100),
    "one_to_100": lambda: one_to_many(100, mbit=100),
}
