"""The shaped-host results as a README table (between its own markers) and one chart.
`python -m bench.net.report` redoes both from bench/results/net.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..readme import replace_between

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- bench-net:start -->", "<!-- bench-net:end -->"


def _cell(row: dict, system: str) -> str:
    result = row["systems"].get(system)
    if result is None:
        return "–"
    if "skipped" in result:
        return "skipped"
    if not result["all_exact"]:
        return "**failed**: " + "; ".join(result["failures"][:2])
    t = result["time_to_all"]
    return f"{t:.1f} s ({t / row['bound_seconds']:.1f}x), {result['seeder_egress_over_file']:.2f} F"


def table(results: dict) -> str:
    lt = results["libtorrent"]
    lines = [
        f"Run on {results['machine']['cpus']} cores, {results['machine']['platform']}, {results['date']}; "
        f"libtorrent {lt['version'] or 'not run: ' + str(lt['skipped'])}"
        + "".join(f" (pieces of {v // 1024} KiB; ours are 512 KiB chunks)" for v in set(lt["piece_size"].values()))
        + "; the whole run took "
        f"{results['wall_seconds'] / 60:.0f} min. F = "
        + ", ".join(sorted({f"{r['size'] / 2**20:g} MiB" for r in results["scenarios"]}))
        + " of random data. Each cell: time until every leecher holds the exact file "
        "(× the Kumar–Ross bound), then what the seeders sent (interface counters) in file sizes F.",
        "",
        "| scenario | bound (Kumar–Ross) | bound if leechers do not upload | p2p (ours): leecher processes "
        "| p2p (ours): running p2p-peer, curl through each host's gateway | libtorrent |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["scenarios"]:
        if "skipped" in row:
            lines.append(f"| {row['title']} | {row['bound_seconds']:.1f} s | {row['bound_without_sharing_seconds']:.1f} s "
                         f"| skipped: {row['skipped']} | skipped | skipped |")
            continue
        lines.append(f"| {row['title']} | {row['bound_seconds']:.1f} s | {row['bound_without_sharing_seconds']:.1f} s "
                     f"| {_cell(row, 'p2p')} | {_cell(row, 'p2p-peer')} | {_cell(row, 'libtorrent')} |")
    return "\n".join(lines)


def update_readme(results: dict, readme: Path = README) -> None:
    replace_between(readme, START, END, table(results))


def _time(row: dict, system: str) -> float | None:
    result = row["systems"].get(system) or {}
    return result.get("time_to_all")


def draw(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["scenarios"] if "skipped" not in r]
    fan_out = [r for r in rows if r["name"].startswith("one_to_")]
    fan_in = [r for r in rows if r["name"].endswith("_to_one")]
    others = [r for r in rows if r not in fan_out and r not in fan_in]
    colors = {"p2p": "#2a7ab0", "p2p-peer": "#40a040", "libtorrent": "#d08020"}
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))

    def lines(ax, group, x, title, key, ylabel, bounds=True):
        xs = [x(r) for r in group]
        if bounds:
            ax.plot(xs, [r["bound_seconds"] for r in group], "k--", label="Kumar–Ross bound")
            if any(r["bound_without_sharing_seconds"] > r["bound_seconds"] * 1.01 for r in group):
                ax.plot(xs, [r["bound_without_sharing_seconds"] for r in group], ":", color="#888888",
                        label="bound if leechers do not upload")
        for system, color in colors.items():
            points = [(xv, r["systems"][system][key]) for xv, r in zip(xs, group)
                      if (r["systems"].get(system) or {}).get(key) is not None]
            if points:
                ax.plot(*zip(*points), "o-", color=color, label=system)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(v) for v in xs])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)

    if fan_out:
        n = lambda r: len(r["leechers"])  # noqa: E731
        lines(axes[0], fan_out, n, "1 seeder → N leechers", "time_to_all", "seconds until all hold the file (log)")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("leechers")
        lines(axes[1], fan_out, n, "1 seeder → N leechers: origin egress", "seeder_egress_over_file",
              "bytes the seeder sent / file size (log)", bounds=False)
        axes[1].set_yscale("log")
        axes[1].set_xlabel("leechers")
    if fan_in:
        lines(axes[2], fan_in, lambda r: len(r["seeders"]), "S seeders at U → 1 leecher at 5U: F / min(5U, S·U)",
              "time_to_all", "seconds until the leecher holds the file")
        axes[2].set_ylim(bottom=0)
        axes[2].set_xlabel("seeders")
    if others:
        ax, width = axes[3], 0.27
        for i, (label, key) in enumerate([("bound", None), ("p2p", "p2p"), ("libtorrent", "libtorrent")]):
            values = [r["bound_seconds"] if key is None else (_time(r, key) or 0) for r in others]
            ax.bar([j + (i - 1) * width for j in range(len(others))], values, width, label=label,
                   color=colors.get(key, "#444444"))
        ax.set_xticks(range(len(others)), [r["name"].replace("_", " ") for r in others])
        ax.set_ylabel("seconds")
        ax.set_title("3 seeders → 1 leecher, disturbed")
        ax.set_ylim(top=ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
        ax.legend(fontsize=8, ncols=3, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "results" / "net.json"
    results = json.loads(source.read_text())
    draw(results, source.with_suffix(".png"))
    update_readme(results)
