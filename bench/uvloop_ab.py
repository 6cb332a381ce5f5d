"""Does uvloop help the leecher? `pip install uvloop`, then `python -m bench.uvloop_ab`.

1 GiB from 3 local seeders, the leecher run alternately on asyncio's loop and on uvloop, each
run from the same state (see bench.run.clean). Prints the medians of wall and CPU time.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tools.localswarm import LocalSwarm, Service, random_file

from .run import GiB, clean

ENTRY = {
    "asyncio": "import sys; from p2p_leecher.main import main; sys.exit(main())",
    "uvloop": "import sys, uvloop; uvloop.install(); from p2p_leecher.main import main; sys.exit(main())",
}


def main(rounds: int = 6) -> int:
    with tempfile.TemporaryDirectory(prefix="p2p-uvloop-") as tmp:
        work = Path(tmp)
        data = random_file(work / "seed" / "ab.bin", GiB)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in ENTRY}
        with LocalSwarm(work) as swarm:
            swarm.start_tracker()
            for _ in range(3):
                swarm.add_seeder([data])
            for round_ in range(rounds):
                # ABBA order: this machine's slow and fast runs alternate, which would favour one side.
                for name, code in sorted(ENTRY.items(), reverse=bool(round_ % 2)):
                    out = work / "out"
                    clean(out)
                    started = time.perf_counter()
                    leecher = Service(name, [sys.executable, "-c", code, "ab.bin", "--tracker", swarm.tracker_addr,
                                             "-o", str(out), "--min-seeders", "3", "--log-format", "json"])
                    code_, usage = leecher.wait_with_usage()
                    if code_ != 0:
                        raise RuntimeError(leecher.output)
                    results[name].append((time.perf_counter() - started, usage.ru_utime + usage.ru_stime))
        for name, runs in results.items():
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"{name:8} median {wall:.2f} s wall, {cpu:.2f} CPU s over {rounds} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
