"""python -m bench.sim: one simulated swarm, or a named scenario; the last line is its JSON.

    python -m bench.sim --seeders 1 --peers 1000 --size-mib 64 --up 100mbit --down 100mbit
    python -m bench.sim --scenario heterogeneous_1000
    python -m bench.sim validate          # against bench/results/net.json
    python -m bench.sim scale             # make sim: the table, the chart, bench/results/sim.json
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys

import structlog

from .run import knobs_from, run_scenario
from .scenarios import NAMED, one_to_many

UNITS = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "k": 1e3, "m": 1e6, "g": 1e9}


def rate(text: str) -> float:
    """'100mbit' -> 1e8 bits per second."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (say 100mbit, 1gbit, 500kbit)")
    return float(match.group(1)) * UNITS[match.group(2).lower()]


def add_knobs(p: argparse.ArgumentParser) -> None:
    k = p.add_argument_group("the library's knobs (default: its own defaults)")
    k.add_argument("--max-peers", type=int, help="peers a download talks to at once (DownloadSettings.max_peers)")
    k.add_argument("--depth", type=int, help="requests in flight per peer (DownloadSettings.pipeline_depth)")
    k.add_argument("--refresh", type=float, help="seconds between lookups, at most (DownloadSettings.refresh_interval)")
    k.add_argument("--no-super-seed", action="store_true", help="origins let downloaders take any chunk")
    k.add_argument("--offer-window", type=int, help="chunks an origin offers each downloader at once (OfferBook)")
    k.add_argument("--random-first", type=int, help="first picks in random order, then rarest-first (ChunkPlan)")
    k.add_argument("--max-connections", type=int, help="connections a server accepts (ServingSettings)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    if argv and argv[0] in ("validate", "scale", "sweep"):
        import importlib

        return importlib.import_module(f"bench.sim.{argv[0]}").main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=sorted(NAMED), help="a named scenario (bench/sim/scenarios.py)")
    p.add_argument("--seeders", type=int, default=1)
    p.add_argument("--peers", type=int, default=100)
    p.add_argument("--size-mib", type=float, default=64)
    p.add_argument("--up", type=rate, default=rate("100mbit"), help="each peer's uplink (default 100mbit)")
    p.add_argument("--down", type=rate, default=rate("100mbit"), help="each peer's downlink (default 100mbit)")
    p.add_argument("--seeder-up", type=rate, help="each seeder's uplink (default: --up)")
    p.add_argument("--chunk-kib", type=int, default=512)
    p.add_argument("--latency-ms", type=float, default=1.0, help="one-way delay between any two hosts (default 1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--limit", type=float, default=3600.0, help="virtual seconds to give up after")
    p.add_argument("--json-out", help="also write the summary (and per-host times) to this file")
    add_knobs(p)
    args = p.parse_args(argv)
    if args.scenario:
        scenario = NAMED[args.scenario]()
    else:
        scenario = one_to_many(args.peers, size_mib=args.size_mib, chunk_kib=args.chunk_kib, latency_ms=args.latency_ms,
                               seeders=args.seeders)
        peer = scenario.leechers[0].__class__(args.up, args.down, delay=scenario.leechers[0].delay)
        seeder = peer.__class__(args.seeder_up or args.up, args.down, delay=peer.delay)
        scenario = scenario.with_(leechers=(peer,) * args.peers, seeders=(seeder,) * args.seeders,
                                  title=f"{args.seeders} seeder(s) → {args.peers} peers, up {args.up / 1e6:g} / down "
                                        f"{args.down / 1e6:g} Mbit/s, seeders up {(args.seeder_up or args.up) / 1e6:g}")
    summary, result = run_scenario(scenario, knobs_from(args), seed=args.seed, limit=args.limit)
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump({**summary, "completion_s": sorted(result.completion.values())}, out, indent=1)
    print(f"{scenario.title}: every peer in {summary['t_all_s']} s ({summary['ratio_to_bound']}x the bound of "
          f"{summary['bound_s']} s), p50 {summary['p50_s']} s, p99 {summary['p99_s']} s; origin sent "
          f"{summary['origin_amplification']} F; {summary['events']:,} events in {summary['wall_s']} s", file=sys.stderr)
    print(json.dumps(summary))
    return 0 if not result.failed else 1


if __name__ == "__main__":
    sys.exit(main())
