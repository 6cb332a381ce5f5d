"""python -m bench.sim scale (make sim): how long to reach N hosts, with our own scheduling code.

One seeder to N peers (N = 10 ... 10,000) at 100 Mbit/s each way, 64 MiB in 512 KiB chunks,
then the named scenarios around 1,000 hosts (heterogeneous links, a flash crowd, churn, lying
peers); every run against its Kumar–Ross bound. Writes bench/results/sim.json and the chart
bench/results/sim.png, prints a table, and last one JSON line with the largest run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

from .run import run_scenario
from .scenarios import NAMED, one_to_many

OUT = Path("bench/results/sim.json")
CHART = Path("bench/results/sim.png")
SIZES = (10, 100, 1_000, 10_000)
NAMED_RUNS = ("heterogeneous_1000", "flash_crowd_1000", "churn_1000", "lying_peer_100")


def table(rows: list[dict]) -> str:
    lines = [
        "| scenario | peers | time to all | × bound (bound) | p50 / p90 / p99 | origin sent | events | wall clock (CPU) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        fast = ""
        if r.get("fast_ratio_to_bound") is not None:
            fast = f"; fast peers {r['fast_t_all_s']:.1f} s, {r['fast_ratio_to_bound']:.2f}x their bound ({r['fast_bound_s']:.1f} s)"
        t_all = f"{r['t_all_s']:.1f} s" if r["t_all_s"] is not None else f"{r['failed']} gave up; the others by {r['max_s']:.0f} s"
        ratio = "–" if r["ratio_to_bound"] is None else f"{r['ratio_to_bound']:.2f}x"
        lines.append(
            f"| {r['title']} | {r['peers']:,} | {t_all}{fast} | {ratio} ({r['bound_s']:.1f} s) "
            f"| {r['p50_s']:.1f} / {r['p90_s']:.1f} / {r['p99_s']:.1f} s | {r['origin_amplification']:.2f} F "
            f"| {r['events']:,} | {r['wall_s']:.0f} s ({r.get('cpu_s', 0):.0f} s) |"
        )
    return "\n".join(lines)


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, scale) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        times = r["completion_s"]
        if times:
            cdf.plot(times, [(i + 1) / len(times) for i in range(len(times))], label=f"{r['scenario']}")
    cdf.set_xlabel("seconds from a peer's arrival to its whole file")
    cdf.set_ylabel("share of peers done")
    cdf.set_title("completion time, each peer")
    cdf.grid(alpha=0.3)
    cdf.legend(fontsize=7)
    series = sorted((r for r in rows if r["scenario"].startswith("1_to_")), key=lambda r: r["peers"])
    ns = [r["peers"] for r in series]
    scale.plot(ns, [r["t_all_s"] or r["max_s"] for r in series], "o-", label="simulated: time until every peer holds the file")
    for r in series:
        if r["failed"]:
            scale.annotate(f"{r['failed']} of {r['peers']:,} gave up;\nthe last of the others", (r["peers"], r["max_s"]),
                           textcoords="offset points", xytext=(-150, -10), fontsize=7)
    scale.plot(ns, [r["bound_s"] for r in series], "k--", label="Kumar–Ross bound")
    scale.plot(ns, [r["no_sharing_s"] for r in series], ":", color="grey", label="bound if peers do not upload")
    scale.set_xscale("log")
    scale.set_yscale("log")
    scale.set_xlabel("peers (1 seeder, 100 Mbit/s each way, 64 MiB)")
    scale.set_ylabel("seconds")
    scale.set_title("time to all against N")
    scale.grid(alpha=0.3, which="both")
    scale.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim scale", description=__doc__)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="peers for one seeder, comma-separated")
    p.add_argument("--named", default=",".join(NAMED_RUNS), help="named scenarios to run after them ('' for none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--chart", type=Path, default=CHART)
    p.add_argument("--redraw", action="store_true", help="only the chart and the table, from --out as it is")
    args = p.parse_args(argv)
    if args.redraw:
        rows = json.loads(args.out.read_text())["runs"]
        chart(rows, args.chart)
        print(table(rows))
        return 0
    scenarios = [one_to_many(int(n), mbit=100) for n in args.sizes.split(",") if n]
    scenarios += [NAMED[name]() for name in args.named.split(",") if name]
    rows = []
    started = time.time()
    for scenario in sorted(scenarios, key=lambda s: len(s.leechers)):  # the largest last; the file grows run by run
        cpu = time.process_time()
        summary, result = run_scenario(scenario, seed=args.seed)
        summary["cpu_s"] = round(time.process_time() - cpu, 1)
        summary["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # so far, this process
        rows.append({**summary, "completion_s": [round(t, 3) for t in sorted(result.completion.values())]})
        print(f"{scenario.name}: {summary['t_all_s']} s, {summary['ratio_to_bound']}x the bound, origin "
              f"{summary['origin_amplification']} F, {summary['events']:,} events in {summary['wall_s']} s "
              f"({summary['cpu_s']} s of CPU)", file=sys.stderr, flush=True)
        args.out.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "machine": f"{os.cpu_count()} cores",
            "python": platform.python_version(), "seed": args.seed, "runs": rows,
        }) + "\n")
    try:
        chart(rows, args.chart)
    except ImportError:
        print("matplotlib missing: no chart (make bench installs it)", file=sys.stderr)
    print(table(rows))
    largest = max((r for r in rows if r["scenario"].startswith("1_to_")), key=lambda r: r["peers"], default=rows[-1])
    print(json.dumps({k: v for k, v in largest.items() if k != "completion_s"}))
    return 0 if all(not r["failed"] for r in rows) else 1
