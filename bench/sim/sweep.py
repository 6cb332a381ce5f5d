"""python -m bench.sim sweep: the policies' knobs across N, and on the testbed's scenarios.

Each setting is run on 1 seeder → N peers (100 Mbit/s, 64 MiB) for each N given, and on every
`make bench-net` scenario as the simulator reproduces it (validate.py): a setting better at
scale must be no worse there. One JSON line per run (to --out as well); a table at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from contextlib import contextmanager

from bench.net.scenarios import SCENARIOS
from p2p_shared.offers import OfferBook

from .run import knobs, run_scenario
from .scenarios import from_testbed, one_to_many
from .validate import STARTUP_S

SETTINGS = {
    "default": {},
    "max_peers=4": {"max_peers": 4},
    "max_peers=16": {"max_peers": 16},
    "max_peers=32": {"max_peers": 32},
    "depth=2": {"depth": 2},
    "depth=8": {"depth": 8},
    "no_super_seed": {"super_seed": False},
    "offer_window=2": {"offer_window": 2},
    "offer_window=8": {"offer_window": 8},
    "random_first=0": {"random_first": 0},
    "random_first=16": {"random_first": 16},
    "refresh=1": {"refresh": 1.0},
    "refresh=2": {"refresh": 2.0},
    "chunk=256KiB": {"chunk_kib": 256},
    "chunk=1MiB": {"chunk_kib": 1024},
    "max_connections=64": {"max_connections": 64},
    "max_connections=1024": {"max_connections": 1024},
    "max_connections=16384": {"max_connections": 16384},
    # Not a knob: a change of the library's code, tried here (the library is not changed).
    "experiment:announces_count_as_active": {"patch": "announces_count_as_active"},
}


@contextmanager
def patched(name: str | None):
    """announces_count_as_active: an origin's OfferBook counts a downloader that announces chunks
    it got elsewhere as active, so it is not 'starved' (offered any chunk) while its peers feed it."""
    if name is None:
        yield
        return
    assert name == "announces_count_as_active", name
    original = OfferBook.holds

    def holds(self, conn, indices, now):
        if conn in self._active_at:
            self._active_at[conn] = now
        return original(self, conn, indices, now)

    OfferBook.holds = holds
    try:
        yield
    finally:
        OfferBook.holds = original


def _knobs(setting: dict):
    return knobs(**{key: v for key, v in setting.items() if key not in ("chunk_kib", "patch")})


def testbed_total(setting: dict, seed: int) -> tuple[float, float]:
    """Sum of the simulated testbed scenarios' times to all, and their largest origin egress."""
    chunk = setting.get("chunk_kib", 512)
    k = _knobs(setting)
    total, egress = 0.0, 0.0
    for scenario in SCENARIOS:
        if scenario.needs_netem:
            continue
        one_to_n = len(scenario.seeders) == 1 and len(scenario.leechers) > 1 or scenario.name == "one_to_1"
        sim = from_testbed(scenario, startup_s=0.0 if one_to_n else STARTUP_S, leave_on_complete=not one_to_n,
                           readers=one_to_n).with_(chunk_size=chunk * 1024)
        summary, _ = run_scenario(sim, k, seed=seed)
        total += summary["t_all_s"]
        egress = max(egress, summary["origin_amplification"])
    return round(total, 2), egress


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim sweep", description=__doc__)
    p.add_argument("--sizes", default="100,1000")
    p.add_argument("--only", help="comma-separated setting names (default: all)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/sim-sweep.json"))
    p.add_argument("--redraw", nargs="*", type=Path, metavar="JSON",
                   help="only the table: from these sweep files (default --out), merged into --out")
    args = p.parse_args(argv)
    if args.redraw is not None:
        merged: dict[str, dict] = {}
        for path in args.redraw or [args.out]:
            for row in json.loads(path.read_text())["rows"]:
                merged[row["setting"]] = row
        rows = [merged[name] for name in SETTINGS if name in merged]
        args.out.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=1) + "\n")
        print(table(rows, args.sizes.split(",")))
        return 0
    names = args.only.split(",") if args.only else list(SETTINGS)
    rows = []
    for name in names:
        setting = SETTINGS[name]
        chunk = setting.get("chunk_kib", 512)
        k = _knobs(setting)
        row = {"setting": name}
        with patched(setting.get("patch")):
            for n in map(int, args.sizes.split(",")):
                summary, _ = run_scenario(one_to_many(n, mbit=100, chunk_kib=chunk), k, seed=args.seed)
                row[f"n{n}"] = {key: summary[key] for key in ("t_all_s", "ratio_to_bound", "p50_s", "origin_amplification", "wall_s")}
            row["testbed_total_s"], row["testbed_max_egress_f"] = testbed_total(setting, args.seed)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        args.out.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=1) + "\n")
    print(table(rows, args.sizes.split(",")))
    return 0


def table(rows: list[dict], sizes: list[str]) -> str:
    lines = ["| setting | " + " | ".join(f"{n} peers: time to all (× bound), origin" for n in sizes)
             + " | the testbed's scenarios simulated: times summed, largest origin egress |",
             "| --- |" + " --- |" * (len(sizes) + 1)]
    for row in rows:
        cells = [f"{row['n' + n]['t_all_s']} s ({row['n' + n]['ratio_to_bound']}x), {row['n' + n]['origin_amplification']} F"
                 for n in sizes]
        lines.append(f"| {row['setting']} | " + " | ".join(cells) + f" | {row['testbed_total_s']} s, {row['testbed_max_egress_f']} F |")
    return "\n".join(lines)
