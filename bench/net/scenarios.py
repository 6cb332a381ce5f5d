"""What the shaped-host benchmark runs: each scenario is hosts with links, a file, and an event.

The bound is Kumar and Ross's fluid-model minimum time for every leecher to hold the file, with
the seeders' uplinks summed as the server's (each holds the whole file):

    T_min = max(F / u_s, F / d_min, N * F / (u_s + sum(u_i)))

Today's leechers do not upload, so the seeders alone carry every copy and the bound for the
system as it is drops the leechers' uplinks: max(F / d_min, N * F / u_s), with each leecher also
limited by min(d_i, u_s); that is N times the first bound for one seeder to N leechers on equal
links.
"""

from __future__ import annotations

from dataclasses import dataclass

from .testbed import Link

MiB = 1 << 20
Mbit = 1e6


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    seeders: tuple[Link, ...]
    leechers: tuple[Link, ...]
    size: int = 64 * MiB
    kill_seeder_at: float | None = None  # seeder 1 is SIGKILLed once the leechers hold this fraction

    @property
    def needs_netem(self) -> bool:
        return any(link.needs_netem for link in (*self.seeders, *self.leechers))

    def bound(self) -> float:
        """Kumar–Ross: seconds, for these links, when every host uploads what it has."""
        bits, n = self.size * 8, len(self.leechers)
        u_s = sum(link.up for link in self.seeders)
        d_min = min(link.down for link in self.leechers)
        return max(bits / u_s, bits / d_min, n * bits / (u_s + sum(link.up for link in self.leechers)))

    def bound_without_sharing(self) -> float:
        """The same when only the seeders upload, as in today's system."""
        bits, n = self.size * 8, len(self.leechers)
        u_s = sum(link.up for link in self.seeders)
        return max(n * bits / u_s, max(bits / min(link.down, u_s) for link in self.leechers))


def one_to_many(n: int, mbit: float = 50, size: int = 64 * MiB) -> Scenario:
    link = Link(mbit * Mbit, mbit * Mbit)
    return Scenario(f"one_to_{n}", f"1 seeder → {n} leecher{'s' * (n > 1)}, {mbit:g} Mbit/s each way",
                    (link,), (link,) * n, size)


def many_to_one(s: int, mbit: float = 20, size: int = 64 * MiB) -> Scenario:
    """S seeders at U each to one leecher with a 5U downlink: the bound is F / min(5U, S·U)."""
    return Scenario(f"{s}_to_one", f"{s} seeder{'s' * (s > 1)} at {mbit:g} Mbit/s → 1 leecher at {5 * mbit:g} Mbit/s down",
                    (Link(mbit * Mbit, mbit * Mbit),) * s, (Link(mbit * Mbit, 5 * mbit * Mbit),), size)


U = Link(20 * Mbit, 20 * Mbit)
FAST_LEECHER = Link(20 * Mbit, 100 * Mbit)

SCENARIOS: list[Scenario] = [
    *(one_to_many(n) for n in (1, 2, 4, 8, 16)),
    *(many_to_one(s) for s in (1, 2, 3, 5)),
    Scenario("heterogeneous", "3 seeders at 20, 20, 2 Mbit/s → 1 leecher at 100 Mbit/s down",
             (U, U, Link(2 * Mbit, 2 * Mbit)), (FAST_LEECHER,)),
    Scenario("seeder_killed", "3 seeders at 20 Mbit/s → 1 leecher, one seeder SIGKILLed at half",
             (U, U, U), (FAST_LEECHER,), kill_seeder_at=0.5),
    Scenario("lossy", "3 seeders at 20 Mbit/s → 1 leecher, 40 ms round trip, 1% loss",
             (Link(20 * Mbit, 20 * Mbit, 40, 1),) * 3, (Link(20 * Mbit, 100 * Mbit, 40, 1),)),
]
