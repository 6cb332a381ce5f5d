"""The picture of a soak: one row per host, each fault a band on the host it hit (Redis faults on
the Redis host, a partial partition also hatched on the hosts it was cut from), each download a
bar on the host that asked (green when it finished, red where it was given up), each failed
attempt a black mark at its end; the run's figures and verdict under it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .checker import load  # noqa: E402

COLOURS = {
    "kill": "#d62728", "stop": "#9467bd", "partition": "#8c564b", "partition_some": "#c49c94", "slow": "#ff7f0e",
    "redis_failover": "#1f77b4", "redis_empty": "#17becf", "redis_stall": "#aec7e8", "disk_full": "#7f7f7f",
    "bitrot": "#e377c2", "clock": "#bcbd22",
}


def draw(folder: Path, png: Path) -> None:
    run, records, catalogue = load(folder)
    hosts = list(run["hosts"])
    row = {h: i for i, h in enumerate(hosts)}
    faults = [r for r in records if r["type"] == "fault" and r["started"] is not None]
    downloads = [r for r in records if r["type"] == "download" and r["started"] is not None]
    end = max([d["ended"] or 0 for d in downloads] + [f["ended"] or 0 for f in faults] + [run["minutes"] * 60])
    fig, ax = plt.subplots(figsize=(16, 0.45 * len(hosts) + 3.2))
    for f in faults:
        length = max((f["ended"] or end) - f["started"], end / 400)
        y = row[f["target"]]
        ax.broken_barh([(f["started"], length)], (y - 0.45, 0.9), color=COLOURS[f["kind"]], alpha=0.55, zorder=1)
        for other in f.get("detail", {}).get("from", []):
            ax.broken_barh([(f["started"], length)], (row[other] - 0.45, 0.9), facecolor="none",
                           edgecolor=COLOURS[f["kind"]], hatch="//", zorder=1)
    lanes: dict[str, list[float]] = {}
    for d in sorted(downloads, key=lambda d: d["started"]):
        free = lanes.setdefault(d["host"], [])
        lane = next((i for i, until in enumerate(free) if until <= d["started"]), len(free))
        if lane == len(free):
            free.append(0.0)
        free[lane] = d["ended"] or end
        y = row[d["host"]] - 0.35 + 0.14 * (lane % 5)
        colour = "#2ca02c" if d["status"] == "ok" else "#d62728"
        ax.plot([d["started"], d["ended"] or end], [y, y], color=colour, linewidth=2.2 if catalogue[d["name"]]["size"] >= 64 << 20 else 1.2,
                solid_capstyle="butt", zorder=3)
        for attempt in d["attempts"]:
            if "error" in attempt:
                ax.plot(attempt["end"], y, marker="x", color="black", markersize=5, zorder=4)
    ax.set_yticks(range(len(hosts)), hosts)
    ax.invert_yaxis()
    ax.set_xlim(0, end)
    ax.set_xlabel("seconds from the start of the run")
    handles = [Patch(color=c, alpha=0.55, label=k) for k, c in COLOURS.items()]
    handles += [Patch(color="#2ca02c", label="download (finished)"), Patch(color="#d62728", label="download given up")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=7, fontsize=8, frameon=False)
    verdict = (folder / "verdict.txt")
    summary = [line for line in (verdict.read_text().splitlines() if verdict.exists() else []) if line.startswith(("figures", "VERDICT"))]
    ax.set_title(f"chaos soak, seed {run['seed']}, {run['minutes']:g} min; x: a failed attempt\n" + "\n".join(summary), fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
