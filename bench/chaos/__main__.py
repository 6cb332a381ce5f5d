"""`make chaos`: a soak of the swarm on shaped hosts under a nemesis, judged by a checker.

    python -m bench.chaos [--minutes M] [--seed S] [--large-mib N] [--out DIR]   run, check, draw
    python -m bench.chaos check DIR                                              judge a run's folder again
    python -m bench.chaos clean                                                  remove a dead run's leftovers

Exit 0 only when every property held; the verdict is the last line printed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from bench.net.testbed import NamespaceError, clean, leftovers, unavailable_reason

from .checker import check
from .hosts import unmount_leftovers

RESULTS = Path(__file__).resolve().parents[1] / "results" / "chaos"
README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- chaos:start -->", "<!-- chaos:end -->"


def _terminate(*_):
    raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C: through every `finally`


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=["run", "check", "clean"])
    p.add_argument("folder", nargs="?", type=Path, help="check: the run's folder")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--large-mib", type=int, default=256, help="the largest files' size (one of this, one 64 MiB larger)")
    p.add_argument("--out", type=Path, default=RESULTS, help="the run's folder (history, logs, verdict, timeline)")
    args = p.parse_args(argv)

    if args.command == "clean":
        mounts = unmount_leftovers()
        gone = clean()
        print(f"removed {len(gone)} leftover namespaces and {len(mounts)} mounts")
        return 0
    if args.command == "check":
        if args.folder is None:
            p.error("check needs the run's folder")
        return _judge(args.folder)
    problem = unavailable_reason() or (leftovers() and f"leftovers of an earlier run ({', '.join(leftovers())}); "
                                       "remove them with `python -m bench.chaos clean`")
    if problem:
        print(f"chaos: {problem}", file=sys.stderr)
        return 1
    from .run import soak  # imports matplotlib-free code only; the timeline is drawn after

    signal.signal(signal.SIGTERM, _terminate)
    try:
        soak(args.out, args.minutes, args.seed, args.large_mib)
    except NamespaceError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chaos: interrupted; namespaces, mounts and processes removed", file=sys.stderr)
        return 130
    return _judge(args.out)


def _judge(folder: Path) -> int:
    ok, lines = check(folder)
    verdict = folder / "verdict.txt"
    verdict.write_text("\n".join(lines) + "\n")  # the timeline shows its figures and verdict
    try:
        from .timeline import draw

        draw(folder, folder / "timeline.png")
        lines.insert(-1, f"timeline: {folder / 'timeline.png'}")
    except ImportError:
        lines.insert(-1, "timeline: not drawn (matplotlib is missing: pip install matplotlib)")
    verdict.write_text("\n".join(lines) + "\n")
    if folder.resolve() == RESULTS.resolve():
        _update_readme(folder, lines)
    print("\n".join(lines))
    return 0 if ok else 1


def _update_readme(folder: Path, lines: list[str]) -> None:
    """The README's last long run: the command, every verdict line, the timeline."""
    run = json.loads((folder / "history.jsonl").read_text().splitlines()[0])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run["wall_start"]))
    shown = [line for line in lines if not line.startswith("timeline:")]
    block = (f"The last long run ({when}, on this 2-core machine shared with other work): "
             f"`make chaos CHAOS_MINUTES={run['minutes']:g} CHAOS_SEED={run['seed']}`\n\n```\n" + "\n".join(shown)
             + "\n```\n\n![the run: faults per host, downloads, failed attempts](bench/results/chaos/timeline.png)\n")
    readme = README.read_text()
    start, end = readme.index(START) + len(START), readme.index(END)
    README.write_text(readme[:start] + "\n" + block + readme[end:])

if __name__ == "__main__":
    sys.exit(main())
