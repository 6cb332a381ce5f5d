"""`make bench-net`: every scenario, with our services and with libtorrent, on shaped hosts.

    python -m bench.net [--only NAME ...] [--size-mib N] [--out FILE]   run, write JSON, chart, README table
    python -m bench.net clean                                           remove a dead run's leftovers
    python -m bench.net registry [--hosts N] [--size-mib M] [--layers L] [--mbit R]
                                 container images through the registry mirror, beside straight pulls
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.localswarm import random_file

from . import registry, report, runner
from .scenarios import MiB, SCENARIOS
from .testbed import PREFIX, NamespaceError, clean, leftovers, netem_available, unavailable_reason

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _terminate(*_):
    raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C: through every `finally`


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.net", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=["run", "clean"])
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"scenarios to run: {', '.join(s.name for s in SCENARIOS)}")
    p.add_argument("--size-mib", type=int, help="file size for every scenario (default: each scenario's, 64)")
    p.add_argument("--out", type=Path, default=RESULTS / "net.json")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["registry"]:
        return _registry(argv[1:])
    args = p.parse_args(argv)

    if args.command == "clean":
        gone = clean()
        print(f"removed {len(gone)} leftover namespaces" + (f": {', '.join(gone)}" if gone else ""))
        return 0
    if not _testbed_ready():
        return 1
    unknown = set(args.only or []) - {s.name for s in SCENARIOS}
    if unknown:
        p.error(f"unknown scenario {', '.join(sorted(unknown))}")
    code, results = _on_testbed(lambda: run_all(args))
    if code is not None:
        return code
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(report.table(results))
    if args.out.parent == RESULTS:
        report.draw(results, RESULTS / "net.png")
        report.update_readme(results)
    return 0


def _testbed_ready() -> bool:
    """Namespaces can be made here and no earlier run left any; else says why."""
    problem = unavailable_reason() or (leftovers() and f"leftovers of an earlier run ({', '.join(leftovers())}); "
                                       "remove them with `make bench-net-clean`")
    if problem:
        print(f"bench-net: {problem}", file=sys.stderr)
    return not problem


def _on_testbed(run):
    """(None, what `run` returned), or (the exit code, None) when the testbed failed or the run
    was interrupted (SIGTERM as Ctrl-C: every namespace and process is removed on the way out)."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return None, run()
    except NamespaceError as exc:
        print(f"bench-net: {exc}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print("bench-net: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130, None


def _registry(argv: list[str]) -> int:
    if not _testbed_ready():
        return 1
    code, found = _on_testbed(lambda: registry.main(argv))
    if code is not None:
        return code
    out = RESULTS / "registry.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **found}, indent=1) + "\n")
    return 0 if all(r["all_verified"] for r in found.values()) else 1


def run_all(args) -> dict:
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if args.size_mib:
        scenarios = [dataclasses.replace(s, size=args.size_mib * MiB) for s in scenarios]
    lt_missing = runner.libtorrent_missing()
    lt_version = None if lt_missing else subprocess.run(
        [runner.LT_PYTHON, "-c", "import libtorrent; print(libtorrent.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    started = time.monotonic()
    rows, torrents = [], {}
    # Named like a run (p<pid>), so `clean` finds it if this process is killed outright.
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}p{os.getpid()}-data-") as data:
        for scenario in scenarios:
            row = {
                "name": scenario.name, "title": scenario.title, "size": scenario.size,
                "seeders": [dataclasses.asdict(x) for x in scenario.seeders],
                "leechers": [dataclasses.asdict(x) for x in scenario.leechers],
                "bound_seconds": scenario.bound(), "bound_without_sharing_seconds": scenario.bound_without_sharing(),
                "systems": {},
            }
            rows.append(row)
            source = Path(data) / f"payload-{scenario.size // MiB}MiB.bin"
            if not source.exists():
                random_file(source, scenario.size)
            if scenario.needs_netem and not netem_available():
                row["skipped"] = "no netem in this kernel (tc: Specified qdisc kind is unknown)"
                print(f"{scenario.name}: skipped, {row['skipped']}", flush=True)
                continue
            systems = ("p2p", "p2p-peer", "libtorrent") if scenario.name.startswith("one_to_") else ("p2p", "libtorrent")
            for system in systems:
                if system == "libtorrent" and lt_missing:
                    row["systems"][system] = {"skipped": lt_missing}
                    continue
                if system == "libtorrent" and source not in torrents:
                    torrents[source] = runner.make_torrent(source)
                torrent = Path(torrents[source]["path"]) if system == "libtorrent" else None
                try:
                    result = runner.run(scenario, system, source, torrent)
                except TimeoutError as exc:  # a service that never became ready: recorded, the run goes on
                    result = {"all_exact": False, "time_to_all": None, "failures": [str(exc).splitlines()[0]]}
                row["systems"][system] = result
                shown = (f"{result['time_to_all']:.1f} s, seeders sent {result['seeder_egress_over_file']:.2f} x F"
                         if result["all_exact"] else "FAILED " + "; ".join(result["failures"]))
                print(f"{scenario.name} {system}: {shown} (bound {scenario.bound():.1f} s)", flush=True)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "libtorrent": {"version": lt_version, "skipped": lt_missing,
                       "piece_size": {str(k.name): v["piece_size"] for k, v in torrents.items()}},
        "wall_seconds": time.monotonic() - started,
        "scenarios": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
