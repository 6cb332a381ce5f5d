"""Keep the README's Performance table true: `make bench` rewrites it from the results it wrote.
`python -m bench.readme` does the same from bench/results/latest.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
CPU_START, CPU_END = "<!-- bench-cpu:start -->", "<!-- bench-cpu:end -->"


def many_leechers_row(m: dict, r: dict, label) -> tuple[str, str]:
    """Leechers at once, sharing and not; results written before leechers shared have one run."""
    if "share" not in m:
        return (f"{m['leechers']} leechers at once, {label(r['many_bytes'])} each, 3 seeders (before leechers shared)",
                f"{'all finished' if m['all_finished'] else 'NOT all finished'}; {m['seconds']:.2f} s, "
                f"seeders sent {m['seeder_egress_bytes'] / 2**20:.0f} MiB")
    both_exact = m["share"]["all_exact"] and m["no_share"]["all_exact"]
    return (f"{m['leechers']} leechers at once, {label(m['bytes'])} each, 3 seeders: sharing / `--no-share`",
            f"{'all exact' if both_exact else 'NOT all exact'}; "
            f"{m['share']['seconds']:.2f} s / {m['no_share']['seconds']:.2f} s until all are done; seeders sent "
            f"{m['share']['seeder_egress_per_file']:.2f}x / {m['no_share']['seeder_egress_per_file']:.2f}x the file")


def gateway_rows(g: dict | None) -> list[tuple[str, str]]:
    """The per-host peer's gateway beside its yardsticks (results written before it had none)."""
    if not g or "skipped" in g:
        return []
    return [
        ("per-host peer: a cached file through its gateway to curl / Debian's nginx, same file, same curl",
         f"{g['gateway_cached_seconds']:.2f} s / {g['nginx_seconds']:.2f} s: **{g['gateway_over_nginx_throughput']:.2f}x "
         f"nginx's throughput** ({g['gateway_mb_per_s']:.0f} MB/s)"),
        ("per-host peer: first byte of an uncached file from one seeder / one chunk from that seeder (connect, ask, receive, SHA-256)",
         f"{g['first_byte_seconds'] * 1000:.1f} ms / {g['one_chunk_seconds'] * 1000:.1f} ms: **{g['first_byte_over_one_chunk']:.1f}x**"),
    ]


def table(r: dict) -> str:
    b, s, head = r["baselines"], r["swarm"], r["swarm"]["one_leecher_three_seeders"]
    sizes = sorted(s["by_size"].values(), key=lambda x: x["bytes"])
    label = lambda n: f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"  # noqa: E731
    seeders = sorted(s["by_seeders"], key=int)
    st, t, m, f, tls = r["startup"], r["tracker"], r["many_leechers"], r["fault"], r["tls"]
    ratios = ", ".join(f"{x:.2f}" for x in b["ratio_per_round"])
    m_ = r["machine"]
    rows = [
        ("hashlib SHA-256, one core, in memory", f"{b['hashlib_seconds']:.2f} s ({r['main_bytes'] / b['hashlib_seconds'] / 1e6:.0f} MB/s)"),
        ("baseline: one TCP stream, `sendfile` → `recv_into` 512 KiB + SHA-256 + `pwrite`", f"{b['tcp_hash_seconds']:.2f} s"),
        ("the same without hashing", f"{b['tcp_nohash_seconds']:.2f} s"),
        ("**leecher, 3 seeders, process start to verified, fsynced file at its final path**",
         f"**{head['seconds']:.2f} s ({head['mb_per_s']:.0f} MB/s): {b['tcp_hash_ratio']:.2f}x the baseline** (per round: {ratios})"),
        ("leecher peak RSS / seeder peak RSS", f"{head['rss_mb']:.0f} MB / {head['seeder_peak_rss_mb']:.0f} MB"),
        ("CPU seconds per GiB: leecher, all seeders, tracker",
         f"{head['leecher_cpu_seconds_per_gib']:.2f}, {head['seeder_cpu_seconds_per_gib']:.2f}, {head['tracker_cpu_seconds_per_gib']:.3f}"),
        (f"file size {', '.join(label(x['bytes']) for x in sizes)}: time", ", ".join(f"{x['seconds']:.2f}" for x in sizes) + " s"),
        ("the same sizes: leecher peak RSS", ", ".join(f"{x['rss_mb']:.0f}" for x in sizes) + " MB"),
        (f"{', '.join(seeders)} seeders", ", ".join(f"{s['by_seeders'][k]['seconds']:.2f}" for k in seeders) + " s"),
        many_leechers_row(m, r, label),
        ("one of 3 seeders SIGKILLed after 100 chunks / undisturbed", f"{f['one_seeder_killed_seconds']:.2f} s / {f['undisturbed_seconds']:.2f} s"),
        ("mutual TLS on the chunk channel / plain", f"{tls['tls_seconds']:.2f} s / {tls['plain_seconds']:.2f} s ({tls['tls_seconds'] / tls['plain_seconds']:.1f}x; CPU per role below)"),
        ("seeder start-up hashing vs hashlib on one thread, same file",
         f"{st['seeder_hash_seconds']:.2f} s vs {st['hashlib_one_thread_seconds']:.2f} s ({st['seeder_hash_seconds'] / st['hashlib_one_thread_seconds']:.2f}x: both cores)"),
        ("seeder start to registered / restart with the file unchanged (manifest cache)",
         f"{st['seeder_start_to_registered_seconds']:.2f} s / {st['restart_unchanged_seconds']:.2f} s (process start included)"),
        *gateway_rows(r.get("gateway")),
        ("tracker, one core, lookups and heartbeats from 64 source addresses", f"{t['requests_per_second']:,.0f} requests/s"),
        ("tracker latency at half that load, p50 / p99", f"{t['half_load']['p50_ms']:.2f} / {t['half_load']['p99_ms']:.2f} ms"),
        ("tracker memory with 100,000 registered seeders", f"{t['rss_mb_100k_seeders']:.0f} MB"),
    ]
    lines = [
        f"Run on {m_['cpus']} cores ({m_['cpu']}), {m_['platform']}, Python {m_['python']}, {r['date']}; "
        f"medians of {r['repeat']} rounds.",
        "",
        f"| measurement ({label(r['main_bytes'])} of random data unless said) | result |",
        "| --- | --- |",
        *(f"| {a} | {b_} |" for a, b_ in rows),
    ]
    return "\n".join(lines)


def replace_between(readme: Path, start: str, end: str, text: str) -> None:
    """Put `text` in place of what the README holds between two markers."""
    before, rest = readme.read_text().split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{text}\n{end}{after}")


def _cpu(x: dict) -> str:
    """CPU seconds per GiB, user + kernel."""
    total = x["total"] if "total" in x else x["utime"] + x["stime"]
    return f"{total:.2f} ({x['utime']:.2f} + {x['stime']:.2f})"


def cpu_table(c: dict, date: str) -> str:
    """Each role's CPU per GiB, plain and over mutual TLS, beside the same rounds' yardsticks."""
    p, t = c["plain"], c["tls"]
    lt = c.get("libtorrent")
    raw = c["tcp_hash"]

    def timing(m: dict) -> str:
        versus = f"{m['seconds'] / lt['seconds']:.2f}x libtorrent, " if lt else ""
        direct = f" ({m['seconds'] / c['tcp_direct']['seconds']:.2f}x its `O_DIRECT` form)" if "tcp_direct" in c else ""
        return f"{m['seconds']:.2f} s: {versus}{m['seconds'] / raw['seconds']:.2f}x the raw stream{direct}"

    rows = [
        ("leecher, process start to verified, fsynced file", _cpu(p["leecher"]), _cpu(t["leecher"]), "1.0"),
        *([("the per-host peer (`p2p-peer`, running already), the file fetched into its cache (`POST .../fetch`)",
            f"{_cpu(c['peer_fetch'])}; {c['peer_fetch']['seconds']:.2f} s", "", "1.0")] if "peer_fetch" in c else []),
        *([("the same, the file fetched through it by curl (and read back out to curl)",
            f"{_cpu(c['peer'])}; {c['peer']['seconds']:.2f} s", "", "")] if "peer" in c else []),
        ("the 3 seeders together", _cpu(p["seeders"]), _cpu(t["seeders"]), "0.3"),
        ("tracker", _cpu(p["tracker"]), _cpu(t["tracker"]), ""),
        ("leecher's time", timing(p), timing(t), "0.5x libtorrent, 1.0x the raw stream"),
        ("TLS / plain: time; leecher CPU; seeders CPU", "", f"{t['seconds'] / p['seconds']:.2f}x; "
         f"{t['leecher']['total'] / p['leecher']['total']:.2f}x; {t['seeders']['total'] / p['seeders']['total']:.2f}x", "1.3x"),
    ]
    yardsticks = [
        ("hashlib SHA-256 alone, in memory, one core", f"{c['hashlib_cpu_per_gib']:.2f}", ""),
        ("a leecher process that only starts (imports, `--help`), per process", f"{c['leecher_startup_cpu_seconds']:.2f}", ""),
        ("raw stream, receiver: `recv_into` 512 KiB + SHA-256 + `pwrite`", _cpu(raw["cpu_per_gib"]), f"{raw['seconds']:.2f} s"),
    ]
    if "sender_cpu_per_gib" in raw:
        yardsticks.append(("raw stream, sender: one `sendfile` of the whole file", _cpu(raw["sender_cpu_per_gib"]), ""))
    if "tcp_direct" in c:
        direct = c["tcp_direct"]
        yardsticks.append(("raw stream, receiver, writing with `O_DIRECT` from a page-aligned buffer (as ours does)",
                           _cpu(direct["cpu_per_gib"]), f"{direct['seconds']:.2f} s"))
    nohash = c["tcp_nohash"]
    yardsticks.append(("raw stream without SHA-256, receiver", _cpu(nohash["cpu_per_gib"]), f"{nohash['seconds']:.2f} s"))
    if lt:
        missing = len(c["rounds"]) - lt.get("rounds", len(c["rounds"]))
        note = f" ({missing} of {len(c['rounds'])} rounds without: its leecher did not finish)" if missing else ""
        yardsticks.append((f"libtorrent 2.0 (Debian's), 3 seeds → 1 leecher on loopback, the leecher{note}",
                           _cpu(lt["cpu_per_gib"]), f"{lt['seconds']:.2f} s"))
    lines = [
        f"`python -m bench.run --only cpu` (also part of `make bench`), {date}, 1 GiB, medians of "
        f"{len(c['rounds'])} rounds, every measurement once per round. CPU seconds per GiB, user + kernel, "
        "from `/proc/<pid>/stat` of each process (the leecher's from `wait4` at its exit):",
        "",
        "| role | plain TCP | mutual TLS | target |",
        "| --- | --- | --- | --- |",
        *(f"| {a} | {b_} | {c_} | {d} |" for a, b_, c_, d in rows),
        "",
        "| yardstick, same rounds | CPU s/GiB (user + kernel) | time |",
        "| --- | --- | --- |",
        *(f"| {a} | {b_} | {c_} |" for a, b_, c_ in yardsticks),
    ]
    return "\n".join(lines)


def update(results: dict, readme: Path = README) -> None:
    replace_between(readme, START, END, table(results))
    if "cpu" in results:
        update_cpu(results["cpu"], results["date"], readme)


def update_cpu(cpu: dict, date: str, readme: Path = README) -> None:
    replace_between(readme, CPU_START, CPU_END, cpu_table(cpu, date))


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json"
    update(json.loads(source.read_text()))

