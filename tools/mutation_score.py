"""The score of a `make mutate` run, from `mutmut results --all true`: every mutant by outcome,
then the ones not killed, so each can be read (`cd .mutate && ../.venv/bin/mutmut show NAME`)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def main(results: Path) -> int:
    outcomes = {}
    for line in results.read_text().splitlines():
        name, sep, outcome = line.strip().rpartition(": ")
        if sep:
            outcomes[name] = outcome
    counts = Counter(outcomes.values())
    killed = counts["killed"]
    print(f"{len(outcomes)} mutants: " + ", ".join(f"{n} {o}" for o, n in counts.most_common()))
    print(f"score: {killed / max(1, len(outcomes)):.1%} killed")
    for name, outcome in sorted(outcomes.items()):
        if outcome != "killed":
            print(f"  {outcome:10} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
