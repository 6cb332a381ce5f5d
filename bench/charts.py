"""The README's charts, drawn from one results file."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MiB = 1 << 20


def draw(results: dict, folder: Path) -> None:
    b = results["baselines"]
    head = results["swarm"]["one_leecher_three_seeders"]
    gib = results["main_bytes"] / (1 << 30)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    labels = ["hashlib SHA-256\n(one core, in memory)", "one TCP stream\n+ pwrite", "one TCP stream\n+ SHA-256 + pwrite",
              "p2p leecher, 3 seeders\n(process start to verified file)"]
    seconds = [b["hashlib_seconds"], b["tcp_nohash_seconds"], b["tcp_hash_seconds"], head["seconds"]]
    bars = ax.barh(labels, seconds, color=["#999999", "#999999", "#555555", "#2a7ab0"])
    ax.bar_label(bars, [f"{s:.2f} s" for s in seconds], padding=3)
    ax.set_xlabel(f"seconds for {gib:g} GiB (lower is better)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(seconds) * 1.25)
    fig.tight_layout()
    fig.savefig(folder / "throughput.png", dpi=110)
    plt.close(fig)

    by_size = sorted(results["swarm"]["by_size"].values(), key=lambda r: r["bytes"])
    sizes = [r["bytes"] / MiB for r in by_size]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(12, 3.4))
    left.loglog(sizes, [r["seconds"] for r in by_size], "o-", color="#2a7ab0")
    left.set_xlabel("file size (MiB)")
    left.set_ylabel("leecher wall time (s)")
    left.set_title("time grows with size")
    middle.semilogx(sizes, [r["rss_mb"] for r in by_size], "o-", color="#2a7ab0")
    middle.set_ylim(0, max(100, max(r["rss_mb"] for r in by_size) * 1.2))
    middle.axhline(100, color="#cc4444", linestyle="--", linewidth=1)
    middle.set_xlabel("file size (MiB)")
    middle.set_ylabel("leecher peak RSS (MB)")
    middle.set_title("memory stays flat")
    counts = sorted(results["swarm"]["by_seeders"], key=int)
    right.plot([int(c) for c in counts], [results["swarm"]["by_seeders"][c]["seconds"] for c in counts], "o-", color="#2a7ab0")
    right.set_xlabel("seeders used")
    right.set_ylabel(f"seconds for {gib:g} GiB")
    right.set_ylim(bottom=0)
    right.set_title("by seeders used (median of rounds)")
    fig.tight_layout()
    fig.savefig(folder / "scaling.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # redraw from a results file: python -m bench.charts [latest.json]
    import json
    import sys

    source = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json")
    draw(json.loads(source.read_text()), source.parent)
