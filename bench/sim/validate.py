"""python -m bench.sim validate: every `make bench-net` scenario, simulated, against its measurement.

The measurements are bench/results/net.json. One seeder to N leechers is compared with the
`p2p-peer` column (per-host peers running before the start, so no process start-up in the
time); the other rows have one leecher process, compared with the `p2p` column, and are
simulated with its start-up (STARTUP_S: `p2p-leecher` importing its modules, measured here).
Targets: time to all within 15%, the seeders' egress within 0.1 F.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.net.scenarios import SCENARIOS

from .run import run_scenario
from .scenarios import from_testbed

NET_JSON = Path("bench/results/net.json")
OUT = Path("bench/results/sim-validation.json")
STARTUP_S = 0.5  # `time p2p-leecher --help` on this machine: 0.50 to 0.60 s
TIME_TOLERANCE = 0.15
EGRESS_TOLERANCE = 0.1


def compare(net_json: Path = NET_JSON, seed: int = 1) -> list[dict]:
    measured = {s["name"]: s for s in json.loads(net_json.read_text())["scenarios"]}
    rows = []
    for scenario in SCENARIOS:
        record = measured.get(scenario.name)
        if record is None:
            continue
        systems = record["systems"]
        if "p2p-peer" in systems and systems["p2p-peer"].get("time_to_all"):
            system, sim = "p2p-peer", from_testbed(scenario, startup_s=0.0, leave_on_complete=False, readers=True)
        elif systems.get("p2p", {}).get("time_to_all"):
            system, sim = "p2p", from_testbed(scenario, startup_s=STARTUP_S, leave_on_complete=True)
        else:
            rows.append({"scenario": scenario.name, "title": scenario.title, "skipped": "not measured (see net.json)"})
            continue
        summary, _ = run_scenario(sim, seed=seed)
        got = systems[system]
        t_measured, t_sim = got["time_to_all"], summary["t_all_s"]
        f_measured, f_sim = got["seeder_egress_over_file"], summary["origin_amplification"]
        row = {
            "scenario": scenario.name, "title": scenario.title, "system": system,
            "bound_s": round(scenario.bound(), 2),
            "measured_s": round(t_measured, 2), "simulated_s": t_sim,
            "time_error": round(t_sim / t_measured - 1, 3),
            "measured_egress_f": round(f_measured, 3), "simulated_egress_f": f_sim,
            "egress_error_f": round(f_sim - f_measured, 3),
            "events": summary["events"], "wall_s": summary["wall_s"],
        }
        if system == "p2p-peer" and systems.get("p2p", {}).get("time_to_all"):
            row["measured_p2p_processes_s"] = round(systems["p2p"]["time_to_all"], 2)
        row["within"] = abs(row["time_error"]) <= TIME_TOLERANCE and abs(row["egress_error_f"]) <= EGRESS_TOLERANCE
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| scenario | bound | measured (column) | simulated | time | seeders' egress measured / simulated | within 15% and 0.1 F |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['title']} | – | {r['skipped']} | – | – | – | – |")
            continue
        lines.append(
            f"| {r['title']} | {r['bound_s']:.1f} s | {r['measured_s']:.1f} s ({r['system']}) | {r['simulated_s']:.1f} s "
            f"| {round(100 * r['time_error']) or 0:+d}% | {r['measured_egress_f']:.2f} / {r['simulated_egress_f']:.2f} F "
            f"| {'yes' if r['within'] else '**no**'} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim validate", description=__doc__)
    p.add_argument("--net-json", type=Path, default=NET_JSON)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--check", action="store_true", help="exit 1 unless every scenario is within the targets")
    args = p.parse_args(argv)
    rows = compare(args.net_json, args.seed)
    args.out.write_text(json.dumps({"net_json": str(args.net_json), "rows": rows}, indent=1) + "\n")
    print(table(rows))
    checked = [r for r in rows if "within" in r]
    within = sum(r["within"] for r in checked)
    summary = {"validated": len(checked), "within": within,
               "max_time_error": max((abs(r["time_error"]) for r in checked), default=None),
               "max_egress_error_f": max((abs(r["egress_error_f"]) for r in checked), default=None)}
    print(json.dumps(summary))
    return 1 if args.check and within < len(checked) else 0
