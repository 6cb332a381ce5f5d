"""`make bench`: the swarm measured next to its physical yardsticks, in one run.

Every timed transfer starts from the same state: the previous output deleted and `sync`ed, so
no run pays for another's disk writeback, and 1.5 GiB of memory touched and released, because
on a virtual machine the first use of freed memory costs seconds of kernel time at random (seen
here: the same download took 1.4 s or 2.7 s, alternately). The baseline and the swarm are
measured in alternating rounds and each figure is the median of `--repeat` rounds, so ratios
hold when the machine's speed drifts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2p_shared import messages
from tools.localswarm import (
    LocalSwarm, RedisServer, Service, free_port, random_file, scrape, service_argv, sha256_file, tracker_request,
)

from . import baselines, tracker_load

MiB = 1 << 20
GiB = 1 << 30
RESULTS = Path(__file__).parent / "results"


def clean(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    settle()


def settle() -> None:
    """The same state before every timed transfer: nothing left to write back, and memory
    just used and freed."""
    os.sync()
    area = mmap.mmap(-1, 3 << 29)  # fault in 1.5 GiB, then give it back: see the module's note
    for offset in range(0, len(area), mmap.PAGESIZE):
        area[offset] = 1
    area.close()


def median_of(repeat: int, measure) -> float:
    return statistics.median(measure() for _ in range(repeat))


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """A memory figure of a running process from /proc (VmHWM: peak RSS; VmRSS: current)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, peak RSS in MB) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), memory_mb(pid)


def proc_times(pid: int) -> tuple[float, float]:
    """(user, kernel) CPU seconds so far of a running process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def download(swarm: LocalSwarm, name: str, out: Path, *args: str) -> dict:
    """One leecher process, spawn to exit: wall time, peak RSS, CPU seconds."""
    clean(out)
    started = time.perf_counter()
    leecher = swarm.leecher(name, out, "--log-format", "json", *args)
    code, usage = leecher.wait_with_usage()
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"leecher failed:\n{leecher.output}")
    # Peak RSS as the leecher reports it (VmHWM): wait4's ru_maxrss would include this parent's.
    [summary] = [e for e in leecher.events() if e.get("event") == "summary"]
    return {"seconds": wall, "rss_mb": summary["peak_rss_mb"], "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "utime": usage.ru_utime, "stime": usage.ru_stime}


def median_download(swarm, name, out, repeat, *args) -> dict:
    runs = [download(swarm, name, out, *args) for _ in range(repeat)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def tcp_baseline(data: Path, work: Path, verify: bool) -> float:
    out = work / "baseline.out"
    clean(out)
    try:
        return baselines.tcp_seconds(data, out, verify)
    finally:
        out.unlink()


def bench_swarm(swarm: LocalSwarm, files: dict[str, Path], work: Path, repeat: int, sizes: list[str]) -> tuple[dict, dict]:
    """The headline (baselines and the swarm in alternating rounds), then the scaling runs."""
    main = "main.bin"
    out = work / "out"
    size = files[main].stat().st_size
    seeders = [(s, *proc_stats(s.proc.pid)) for s in swarm.seeders]
    tracker_cpu0, _ = proc_stats(swarm.tracker.proc.pid)
    rounds = []
    for _ in range(repeat):
        rounds.append({
            "tcp_hash_seconds": tcp_baseline(files[main], work, True),
            "tcp_nohash_seconds": tcp_baseline(files[main], work, False),
            "leecher": download(swarm, main, out, "--max-peers", "3"),
        })
    base = {
        "hashlib_seconds": median_of(repeat, lambda: baselines.hashlib_seconds(size)),
        "tcp_hash_seconds": statistics.median(r["tcp_hash_seconds"] for r in rounds),
        "tcp_nohash_seconds": statistics.median(r["tcp_nohash_seconds"] for r in rounds),
        "ratio_per_round": [r["leecher"]["seconds"] / r["tcp_hash_seconds"] for r in rounds],
    }
    headline = {key: statistics.median(r["leecher"][key] for r in rounds) for key in rounds[0]["leecher"]}
    served = repeat * size / GiB
    seeder_cpu = sum(proc_stats(s.proc.pid)[0] - cpu0 for s, cpu0, _ in seeders)
    result = {
        "one_leecher_three_seeders": {
            **headline,
            "mb_per_s": files[main].stat().st_size / headline["seconds"] / 1e6,
            "leecher_cpu_seconds_per_gib": headline["cpu_seconds"] * GiB / files[main].stat().st_size,
            "seeder_cpu_seconds_per_gib": seeder_cpu / served,
            "tracker_cpu_seconds_per_gib": (proc_stats(swarm.tracker.proc.pid)[0] - tracker_cpu0) / served,
            "seeder_peak_rss_mb": max(proc_stats(s.proc.pid)[1] for s, _, _ in seeders),
        }
    }
    result["by_size"] = {
        name: {"bytes": files[name].stat().st_size, **median_download(swarm, name, out, repeat if files[name].stat().st_size < 2 * GiB else 1, "--max-peers", "3")}
        for name in sizes
    }
    # Seeder counts in rounds, so a noisy moment of the machine does not land on one count only.
    rounds = [{k: download(swarm, main, out, "--max-peers", str(k)) for k in (1, 2, 3, 5)} for _ in range(repeat)]
    result["by_seeders"] = {
        str(k): {key: statistics.median(r[k][key] for r in rounds) for key in rounds[0][k]} for k in (1, 2, 3, 5)
    }
    clean(out)
    return base, result


def egress_bytes(seeders) -> float:
    return sum(scrape(s.metrics_port)[("p2p_seeder_bytes_served_total", ())] for s in seeders)


def bench_many_leechers(data: Path, work: Path, repeat: int, count: int = 8) -> dict:
    """`count` leechers at once from 3 seeders, sharing (the default) and with --no-share, in
    alternating rounds: time until all are done, every copy checked, seeder egress summed."""
    expected = sha256_file(data)
    size = data.stat().st_size
    rounds: dict[str, list[dict]] = {"share": [], "no_share": []}
    with LocalSwarm(work / "many-swarm", heartbeat=30) as swarm:
        swarm.start_tracker()
        seeders = [swarm.add_seeder([data], "--cache-dir", str(work / "manifest-cache"), metrics=True) for _ in range(3)]
        for n in range(repeat):
            for mode in ("no_share", "share") if n % 2 == 0 else ("share", "no_share"):
                outs = [work / f"many{i}" for i in range(count)]
                for out in outs:
                    clean(out)
                cpu_before = sum(proc_stats(s.proc.pid)[0] for s in seeders)
                egress_before = egress_bytes(seeders)
                extra = ["--no-share"] if mode == "no_share" else []
                started = time.perf_counter()
                leechers = [swarm.leecher(data.name, out, "--log-format", "json", *extra) for out in outs]
                codes = [leecher.wait(600) for leecher in leechers]
                wall = time.perf_counter() - started
                exact = all(c == 0 and sha256_file(out / data.name) == expected for c, out in zip(codes, outs))
                for out in outs:
                    clean(out)
                rounds[mode].append({
                    "all_exact": exact,
                    "seconds": wall,
                    "seeder_egress_bytes": egress_bytes(seeders) - egress_before,
                    "seeder_cpu_seconds": sum(proc_stats(s.proc.pid)[0] for s in seeders) - cpu_before,
                })
    result: dict = {"leechers": count, "seeders": 3, "bytes": size}
    for mode, runs in rounds.items():
        result[mode] = {
            "all_exact": all(r["all_exact"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
            "seeder_egress_bytes": statistics.median(r["seeder_egress_bytes"] for r in runs),
            "seeder_egress_per_file": statistics.median(r["seeder_egress_bytes"] for r in runs) / size,
            "seeder_cpu_seconds": statistics.median(r["seeder_cpu_seconds"] for r in runs),
            "rounds": runs,
        }
    return result


def bench_seeder_killed(files: dict[str, Path], work: Path, repeat: int) -> dict:
    """1 GiB from 3 seeders, undisturbed and with one seeder SIGKILLed after 100 chunks served."""
    import signal

    def served(port: int) -> float:
        return scrape(port)[("p2p_seeder_chunks_served_total", ())]

    out = work / "fault-out"
    normal, faulted = [], []
    for _ in range(repeat):
        with LocalSwarm(work, heartbeat=30) as swarm:
            swarm.start_tracker()
            ports = [free_port() for _ in range(3)]
            seeders = [swarm.add_seeder([files["main.bin"]], "--metrics-port", str(p)) for p in ports]
            normal.append(download(swarm, "main.bin", out)["seconds"])
            clean(out)
            before = served(ports[0])
            started = time.perf_counter()
            leecher = swarm.leecher("main.bin", out, "--log-format", "json")
            while served(ports[0]) - before < 100 and leecher.proc.poll() is None:
                time.sleep(0.005)
            seeders[0].send_signal(signal.SIGKILL)
            if leecher.wait(600) != 0:
                raise RuntimeError(f"leecher failed:\n{leecher.output}")
            faulted.append(time.perf_counter() - started)
            clean(out)
    return {"undisturbed_seconds": statistics.median(normal), "one_seeder_killed_seconds": statistics.median(faulted)}


def tls_args(work: Path) -> tuple[list[str], list[str]]:
    """Mutual TLS: (a seeder's arguments, a leecher's), certificates made by deploy/make-certs.sh."""
    certs = work / "certs"
    if not (certs / "ca.crt").exists():
        subprocess.run([str(Path(__file__).parents[1] / "deploy" / "make-certs.sh"), str(certs)], check=True, capture_output=True)
    seeder = ["--tls-cert", str(certs / "seeder.crt"), "--tls-key", str(certs / "seeder.key"), "--tls-ca", str(certs / "ca.crt")]
    leecher = ["--tls-ca", str(certs / "ca.crt"), "--tls-cert", str(certs / "leecher.crt"), "--tls-key", str(certs / "leecher.key")]
    return seeder, leecher


ROLES = ("leecher", "seeders", "tracker")


def bench_cpu(data: Path, work: Path, repeat: int) -> dict:
    """CPU seconds per GiB of each role, user and kernel apart, from /proc of each process (the
    leecher's from wait4 at its exit), plain and over mutual TLS, beside the same rounds'
    yardsticks: hashlib alone, one raw TCP stream (sendfile -> recv_into + SHA-256 + pwrite, and
    without SHA-256) and libtorrent on loopback (one leecher, 3 seeds). Each round runs every
    measurement once; figures are medians of the rounds."""
    size = data.stat().st_size
    per_gib = GiB / size
    seeder_tls, leecher_tls = tls_args(work)
    out = work / "cpu-out"
    lt = baselines.LibtorrentSwarm(data, work / "lt") if baselines.libtorrent_available() else None
    rounds: list[dict] = []
    try:
        with LocalSwarm(work / "cpu-plain", heartbeat=30) as plain, LocalSwarm(work / "cpu-tls", heartbeat=30) as tls:
            for swarm, extra in ((plain, []), (tls, seeder_tls)):
                swarm.start_tracker()
                for _ in range(3):
                    swarm.add_seeder([data], "--cache-dir", str(work / "manifest-cache"), *extra)
            # The per-host peer, long-running: its process start is not paid per file.
            peer = plain.add_peer(work / "cpu-peer-cache", "--cache-size", f"{2 * size + GiB}") if shutil.which("curl") else None
            for n in range(repeat):
                found: dict = {}
                found["tcp_hash"] = baselines_cpu(data, work, True)
                found["tcp_direct"] = baselines_cpu(data, work, True, direct=True)
                found["tcp_nohash"] = baselines_cpu(data, work, False)
                if lt is not None:
                    clean(out)
                    if (fetched := lt.fetch(out)) is not None:
                        found["libtorrent"] = fetched
                for mode, swarm, extra in (("plain", plain, []), ("tls", tls, leecher_tls))[:: 1 if n % 2 == 0 else -1]:
                    pids = {"seeders": [s.proc.pid for s in swarm.seeders], "tracker": [swarm.tracker.proc.pid]}
                    before = {role: [proc_times(p) for p in ps] for role, ps in pids.items()}
                    run = download(swarm, data.name, out, "--max-peers", "3", *extra)
                    after = {role: [proc_times(p) for p in ps] for role, ps in pids.items()}
                    found[mode] = {"seconds": run["seconds"], "leecher": {"utime": run["utime"], "stime": run["stime"]}}
                    for role in pids:
                        found[mode][role] = {
                            key: sum(a[k] - b[k] for a, b in zip(after[role], before[role]))
                            for k, key in enumerate(("utime", "stime"))
                        }
                if peer is not None:
                    found["peer_fetch"] = peer_fetch_cpu(peer, data.name, read=False)
                    found["peer"] = peer_fetch_cpu(peer, data.name, read=True)
                rounds.append(found)
    finally:
        if lt is not None:
            lt.stop()
        clean(out)

    def med(path) -> float:
        return statistics.median(path(r) for r in rounds)

    def cpu_per_gib(get) -> dict:
        """User, kernel and their sum, each the median of the rounds, per GiB, of what `get` finds in a round."""
        per = {k: med(lambda r: get(r)[k]) * per_gib for k in ("utime", "stime")}
        return {**per, "total": med(lambda r: get(r)["utime"] + get(r)["stime"]) * per_gib}

    result: dict = {"bytes": size, "rounds": rounds, "hashlib_seconds": median_of(repeat, lambda: baselines.hashlib_seconds(size))}
    result["hashlib_cpu_per_gib"] = result["hashlib_seconds"] * per_gib
    result["leecher_startup_cpu_seconds"] = statistics.median(startup_cpu() for _ in range(3))
    for base in ("tcp_hash", "tcp_direct", "tcp_nohash", "libtorrent"):
        runs = [r[base] for r in rounds if base in r]  # (a libtorrent round that did not finish has none)
        if runs:
            result[base] = {
                "seconds": statistics.median(r["seconds"] for r in runs),
                "cpu_per_gib": {k: statistics.median(r[k] for r in runs) * per_gib for k in ("utime", "stime")},
                "rounds": len(runs),
            }
            if "sender" in runs[0]:
                result[base]["sender_cpu_per_gib"] = {
                    k: statistics.median(r["sender"][k] for r in runs) * per_gib for k in ("utime", "stime")}
    for key in ("peer_fetch", "peer"):
        if all(key in r for r in rounds):
            result[key] = {"seconds": med(lambda r: r[key]["seconds"]), **cpu_per_gib(lambda r: r[key])}
    for mode in ("plain", "tls"):
        result[mode] = {"seconds": med(lambda r: r[mode]["seconds"])}
        for role in ROLES:
            result[mode][role] = cpu_per_gib(lambda r: r[mode][role])
    return result


def peer_fetch_cpu(peer: Service, name: str, read: bool) -> dict:
    """The per-host peer fetches the file from the same 3 seeders as the leecher: its time, and
    the peer process's CPU over it. `read`: for curl (`GET /files/NAME` to /dev/null, which ends
    with the last verified byte; reading the file out to curl included); else into its cache
    alone (`POST /files/NAME/fetch`, then the listing asked every 20 ms until the file is
    complete). The file is dropped from its cache before and after, so each round fetches it
    whole and the leecher's rounds never find the peer holding it."""
    import urllib.request

    def listing() -> list[dict]:
        return json.loads(urllib.request.urlopen(f"{peer.url}/files").read())["files"]

    def drop() -> None:
        for entry in listing():
            if entry["name"] == name:
                urllib.request.urlopen(urllib.request.Request(f"{peer.url}/files/{entry['file_id']}", method="DELETE")).read()

    drop()
    settle()
    before = proc_times(peer.proc.pid)
    started = time.perf_counter()
    if read:
        _, seconds, _ = curl_seconds(f"{peer.url}/files/{name}")
    else:
        urllib.request.urlopen(urllib.request.Request(f"{peer.url}/files/{name}/fetch", method="POST")).read()
        while not any(entry["name"] == name and entry["complete"] for entry in listing()):
            time.sleep(0.02)
        seconds = time.perf_counter() - started
    after = proc_times(peer.proc.pid)
    drop()
    if listing():
        raise RuntimeError("the per-host peer kept the file: the next round would not fetch it")
    return {"seconds": seconds, "utime": after[0] - before[0], "stime": after[1] - before[1]}


def startup_cpu() -> float:
    """CPU seconds of a leecher process that only starts (imports) and prints its help: the part
    of its CPU per GiB that does not depend on the bytes."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(service_argv("leecher", "--help"), check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def baselines_cpu(data: Path, work: Path, verify: bool, direct: bool = False) -> dict:
    out = work / "baseline.out"
    clean(out)
    try:
        return baselines.tcp_cpu(data, out, verify, direct)
    finally:
        out.unlink()


def cpu_rows(c: dict) -> list[tuple[str, str, str]]:
    """The CPU table: each role's CPU seconds per GiB (user + kernel), plain and TLS, and the yardsticks."""
    rows = [("hashlib SHA-256 alone, one core", f"{c['hashlib_cpu_per_gib']:.2f} s/GiB", ""),
            ("leecher process start-up alone (imports, --help)", f"{c['leecher_startup_cpu_seconds']:.2f} s", "")]
    for base, label in (("tcp_hash", "raw stream: sendfile -> recv_into + SHA-256 + pwrite"),
                        ("tcp_direct", "raw stream, pwrite with O_DIRECT"), ("tcp_nohash", "raw stream without SHA-256"), ("libtorrent", "libtorrent 2.0, 3 seeds -> 1 leecher")):
        if base in c:
            b = c[base]
            rows.append((f"{label} (receiver)", f"{b['cpu_per_gib']['utime'] + b['cpu_per_gib']['stime']:.2f} s/GiB",
                         f"user {b['cpu_per_gib']['utime']:.2f} + kernel {b['cpu_per_gib']['stime']:.2f}; {b['seconds']:.2f} s"))
            if "sender_cpu_per_gib" in b:
                u, k = b["sender_cpu_per_gib"]["utime"], b["sender_cpu_per_gib"]["stime"]
                rows.append((f"{label} (sender)", f"{u + k:.2f} s/GiB", f"user {u:.2f} + kernel {k:.2f}"))
    for mode in ("plain", "tls"):
        m = c[mode]
        for role in ROLES:
            r = m[role]
            rows.append((f"ours, {mode}: {role}", f"{r['total']:.2f} s/GiB", f"user {r['utime']:.2f} + kernel {r['stime']:.2f}"))
        extra = ""
        if "libtorrent" in c:
            extra += f"; {m['seconds'] / c['libtorrent']['seconds']:.2f}x libtorrent"
        if "tcp_direct" in c:
            extra += f"; {m['seconds'] / c['tcp_direct']['seconds']:.2f}x the O_DIRECT raw stream"
        rows.append((f"ours, {mode}: leecher time", f"{m['seconds']:.2f} s", f"{m['seconds'] / c['tcp_hash']['seconds']:.2f}x the raw stream{extra}"))
    for key, label in (("peer_fetch", "into its cache"), ("peer", "to curl")):
        if key in c:
            r = c[key]
            rows.append((f"ours, per-host peer (plain), {label}", f"{r['total']:.2f} s/GiB", f"user {r['utime']:.2f} + kernel {r['stime']:.2f}; {r['seconds']:.2f} s"))
    p, t = c["plain"], c["tls"]
    rows.append(("TLS / plain: time, leecher CPU, seeders CPU", f"{t['seconds'] / p['seconds']:.2f}x",
                 f"{t['leecher']['total'] / p['leecher']['total']:.2f}x, {t['seeders']['total'] / p['seeders']['total']:.2f}x"))
    return rows


def bench_startup(data: Path, work: Path, tracker_addr: str) -> dict:
    cache = work / "startup-cache"

    def start() -> tuple[float, float | None]:
        started = time.perf_counter()
        seeder = Service("seeder", service_argv(
            "seeder", "-f", str(data), "-p", str(free_port()), "--host", "127.0.0.1", "--tracker", tracker_addr,
            "--metrics-port", "0", "--cache-dir", str(cache), "--log-format", "json"))
        try:
            ready = seeder.wait_for("file ready", timeout=300)
            seeder.wait_for("registered with tracker", timeout=60)
            return time.perf_counter() - started, ready.get("hash_seconds")
        finally:
            seeder.stop()

    shutil.rmtree(cache, ignore_errors=True)
    first, hash_seconds = start()
    restart, _ = start()
    return {
        "bytes": data.stat().st_size,
        "hashlib_one_thread_seconds": baselines.hashlib_file_seconds(data),
        "seeder_hash_seconds": hash_seconds,
        "seeder_start_to_registered_seconds": first,
        "restart_unchanged_seconds": restart,
    }


def nginx(root: Path, work: Path) -> tuple[Service, int]:
    """Debian's nginx serving `root` on a loopback port: one worker, sendfile on, no logs."""
    port = free_port()
    prefix = work / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    temp = " ".join(f"{kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = prefix / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""  # as root, its worker would be nobody: no way into our temp folder
    conf.write_text(
        f"daemon off; {user}worker_processes 1; pid {prefix}/nginx.pid; error_log stderr warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; sendfile on; tcp_nopush on; default_type application/octet-stream; {temp}\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n"
    )
    server = Service("nginx", ["nginx", "-c", str(conf), "-p", str(prefix)])
    deadline = time.monotonic() + 10
    while subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"]).returncode != 0:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise RuntimeError(f"nginx did not start:\n{server.output}")
        time.sleep(0.05)
    return server, port


def curl_seconds(url: str, *args: str) -> tuple[float, float, int]:
    """curl to /dev/null: (seconds to the first byte, seconds in all, bytes)."""
    done = subprocess.run(["curl", "-sS", "--fail-with-body", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download}",
                           *args, url], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"curl {url} failed ({done.returncode}): {done.stderr}")
    first, total, size = done.stdout.split()
    return float(first), float(total), int(size)


def bench_gateway(data: Path, work: Path, repeat: int) -> dict:
    """The per-host peer's gateway on loopback, beside its yardsticks in the same run:
    - a complete cached file to curl, against Debian's nginx serving the same file to the same curl;
    - the time to the first byte of a file not cached, from one seeder (the whole way: the
      lookup, the manifest, a connection, the first chunk verified), against the time one chunk
      takes from that seeder (connect, greet, ask, receive, SHA-256)."""
    import urllib.request

    if shutil.which("nginx") is None or shutil.which("curl") is None:
        return {"skipped": "nginx or curl is missing (apt-get install nginx-light curl)"}
    size = data.stat().st_size
    with LocalSwarm(work / "gateway-swarm", heartbeat=30) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data], "--cache-dir", str(work / "manifest-cache"))
        peer = swarm.add_peer(work / "gateway-cache", "--cache-size", f"{2 * size + GiB}")
        url = f"{peer.url}/files/{data.name}"
        curl_seconds(url)  # into the cache
        web, port = nginx(data.parent, work)
        try:
            served, nginx_runs = [], []
            for n in range(repeat):
                for who in ("gateway", "nginx") if n % 2 == 0 else ("nginx", "gateway"):
                    _, total, got = curl_seconds(url if who == "gateway" else f"http://127.0.0.1:{port}/{data.name}")
                    assert got == size
                    (served if who == "gateway" else nginx_runs).append(total)
        finally:
            web.stop()
        file_id = json.loads(urllib.request.urlopen(f"{peer.url}/files").read())["files"][0]["file_id"]
        first_bytes, chunks = [], []
        for _ in range(max(repeat, 5)):
            urllib.request.urlopen(urllib.request.Request(f"{peer.url}/files/{file_id}", method="DELETE")).read()
            chunks.append(baselines.one_chunk_seconds(seeder.port, file_id, 512 * 1024))
            first_bytes.append(curl_seconds(url, "-r", "0-0")[0])
    gateway_s, nginx_s = statistics.median(served), statistics.median(nginx_runs)
    ttfb, chunk = statistics.median(first_bytes), statistics.median(chunks)
    return {
        "bytes": size,
        "gateway_cached_seconds": gateway_s, "nginx_seconds": nginx_s,
        "gateway_mb_per_s": size / gateway_s / 1e6, "nginx_mb_per_s": size / nginx_s / 1e6,
        "gateway_over_nginx_throughput": nginx_s / gateway_s,
        "first_byte_seconds": ttfb, "one_chunk_seconds": chunk, "first_byte_over_one_chunk": ttfb / chunk,
        "rounds": {"gateway": served, "nginx": nginx_runs, "first_byte": first_bytes, "one_chunk": chunks},
    }


def start_trackers(count: int, *args: str) -> list[Service]:
    """Tracker processes on free ports, pinned to CPU 0 (the load generator gets CPU 1)."""
    trackers = []
    for _ in range(count):
        port = free_port(2)
        tracker = Service("tracker", service_argv(
            "tracker", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--log-format", "json",
            "--log-level", "warning", "--max-seeders", "200000", "--heartbeat-interval", "600",
            "--max-requests-per-address", "0",  # all load comes from loopback
            "--max-holders-per-address", "0", "--max-files-per-address", "0", *args))
        tracker.address = ("127.0.0.1", port)  # type: ignore[attr-defined]
        trackers.append(tracker)
    for tracker in trackers:
        tracker_request(tracker.address, messages.ListFiles())
        tracker_load.set_affinity(tracker.proc.pid, 0)
    return trackers


def load_trackers(addresses: list, seconds: float) -> dict:
    """Capacity (closed loop), then the median of 3 open-loop runs at half of it, by p99."""
    seeders = 1000  # registered by each load process, from its own sockets
    rate = tracker_load.capacity(addresses, seeders, seconds, cpu=1)
    runs = [tracker_load.latency(addresses, seeders, rate / 2, seconds=min(seconds, 3.0), cpu=1) for _ in range(3)]
    return {"requests_per_second": rate, "half_load": sorted(runs, key=lambda r: r["p99_ms"])[1]}


def bench_tracker(seconds: float, work: Path, failover_rounds: int = 3) -> dict:
    """The memory store (one tracker), then the Redis store with one and two replicas: the same
    load generator, the same run; the server side (trackers and redis-server) on CPU 0."""
    [tracker] = start_trackers(1)
    try:
        result = load_trackers([tracker.address], seconds)
        tracker_load.register([tracker.address], 100_000)
        result["rss_mb_100k_seeders"] = memory_mb(tracker.proc.pid, "VmRSS")
        result["peak_rss_mb"] = memory_mb(tracker.proc.pid)
    finally:
        tracker.stop()
    if shutil.which("redis-server") is None:
        print("redis-server is missing (apt-get install redis-server): the Redis store is not measured", flush=True)
        return result
    result["redis"] = {}
    for replicas in (1, 2):
        redis = RedisServer(work / "redis").start()
        tracker_load.set_affinity(redis.service.proc.pid, 0)
        trackers = start_trackers(replicas, "--registry", redis.url)
        try:
            result["redis"][str(replicas)] = load_trackers([t.address for t in trackers], seconds)
        finally:
            for t in trackers:
                t.stop()
            redis.stop()
    redis = RedisServer(work / "redis").start()
    try:
        result["failover"] = asyncio.run(failover(redis.url, work, rounds=failover_rounds))
    finally:
        redis.stop()
    return result


async def failover(url: str, work: Path, interval: float = 2.0, rounds: int = 3) -> dict:
    """From a replica's death (SIGKILL: the kernel then refuses its port) or freeze (SIGSTOP: it
    just stops answering, as a host that is gone) to the next successful lookup of a client that
    used it, and to the next successful heartbeat of a holder that used it. The death comes at a
    random moment of the holder's heartbeat cycle; its next beat is due up to one interval later."""
    import random

    from prometheus_client import CollectorRegistry

    from p2p_shared.net.holder_link import HolderLink, LinkMetrics
    from p2p_shared.net.tracker_client import TrackerClient

    rng = random.Random(1)
    lookup = messages.Lookup(file_id=tracker_load.FILE.file_id)
    found: dict[str, dict[str, list[float]]] = {}
    for how in ("killed", "frozen"):
        lookups, beats = [], []
        for _ in range(rounds):
            trackers = start_trackers(2, "--registry", url, "--heartbeat-interval", str(interval))
            addresses = [t.address for t in trackers]
            link_client = TrackerClient(addresses)
            metrics = LinkMetrics(CollectorRegistry(), "bench")
            link = HolderLink(link_client, 7000, None, metrics)
            link.add(tracker_load.FILE)
            stop = asyncio.Event()
            running = asyncio.create_task(link.run(stop))
            clients = []
            try:
                await link.registered_once.wait()
                [victim] = [t for t in trackers if t.address == tuple(link_client.address[:2])]
                while not clients or clients[-1].address[:2] != victim.address:  # a client on the same replica
                    clients.append(TrackerClient(addresses))
                    await clients[-1].request(lookup)
                await asyncio.sleep(rng.uniform(0, interval))
                ok = metrics.heartbeats.labels("ok")
                beaten = ok._value.get()
                if how == "killed":
                    victim.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(victim.proc.wait)  # dead: its port closed
                else:
                    victim.send_signal(signal.SIGSTOP)
                died = time.perf_counter()
                reply = await clients[-1].request(lookup)
                assert isinstance(reply, messages.Peers) and reply.peers, reply
                lookups.append(time.perf_counter() - died)
                while ok._value.get() == beaten:
                    await asyncio.sleep(0.005)
                beats.append(time.perf_counter() - died)
            finally:
                stop.set()
                await running
                for client in [link_client, *clients]:
                    client.close()
                for t in trackers:
                    t.send_signal(signal.SIGCONT)
                    t.stop()
        found[how] = {"lookup_seconds": lookups, "heartbeat_seconds": beats}
    return {"heartbeat_interval": interval, **found}


def table(results: dict) -> str:
    b, s, st, t = results["baselines"], results["swarm"], results["startup"], results["tracker"]
    head = s["one_leecher_three_seeders"]
    size_gib = results["main_bytes"] / GiB
    rows = [
        ("hashlib SHA-256, one core", f"{b['hashlib_seconds']:.2f} s", f"{results['main_bytes'] / b['hashlib_seconds'] / 1e6:.0f} MB/s"),
        ("one TCP stream + SHA-256 + pwrite (baseline)", f"{b['tcp_hash_seconds']:.2f} s", "1.00x"),
        ("one TCP stream + pwrite, no hashing", f"{b['tcp_nohash_seconds']:.2f} s", f"{b['tcp_nohash_seconds'] / b['tcp_hash_seconds']:.2f}x"),
        (f"leecher, {size_gib:g} GiB from 3 seeders (process start to verified file)", f"{head['seconds']:.2f} s",
         f"{b['tcp_hash_ratio']:.2f}x ({head['mb_per_s']:.0f} MB/s)"),
        ("leecher peak RSS", f"{head['rss_mb']:.0f} MB", ""),
        ("seeder peak RSS", f"{head['seeder_peak_rss_mb']:.0f} MB", ""),
        ("CPU s/GiB: leecher, seeders, tracker", f"{head['leecher_cpu_seconds_per_gib']:.2f}, {head['seeder_cpu_seconds_per_gib']:.2f}, {head['tracker_cpu_seconds_per_gib']:.3f}", ""),
    ]
    for name, r in s["by_size"].items():
        rows.append((f"size {r['bytes'] / MiB:.0f} MiB", f"{r['seconds']:.2f} s", f"RSS {r['rss_mb']:.0f} MB"))
    for k, r in s["by_seeders"].items():
        rows.append((f"{k} seeder(s), {size_gib:g} GiB", f"{r['seconds']:.2f} s", ""))
    m = results["many_leechers"]
    for mode in ("share", "no_share"):
        r_ = m[mode]
        rows.append((f"{m['leechers']} leechers, {m['bytes'] / MiB:.0f} MiB, 3 seeders, {mode}", f"{r_['seconds']:.2f} s",
                     f"seeder egress {r_['seeder_egress_per_file']:.2f}x the file, all exact: {r_['all_exact']}"))
    rows.append(("seeder start: hashlib one thread / seeder hashing", f"{st['hashlib_one_thread_seconds']:.2f} s / {st['seeder_hash_seconds']:.2f} s",
                 f"{st['seeder_hash_seconds'] / st['hashlib_one_thread_seconds']:.2f}x"))
    rows.append(("seeder start to registered / restart unchanged", f"{st['seeder_start_to_registered_seconds']:.2f} s / {st['restart_unchanged_seconds']:.2f} s", ""))
    f = results["fault"]
    rows.append((f"{size_gib:g} GiB, one of 3 seeders SIGKILLed midway / undisturbed", f"{f['one_seeder_killed_seconds']:.2f} s / {f['undisturbed_seconds']:.2f} s",
                 f"{f['one_seeder_killed_seconds'] / f['undisturbed_seconds']:.2f}x"))
    t_ = results["tls"]
    rows.append((f"{size_gib:g} GiB over mutual TLS / plain", f"{t_['tls_seconds']:.2f} s / {t_['plain_seconds']:.2f} s",
                 f"{t_['tls_seconds'] / t_['plain_seconds']:.2f}x"))
    if "cpu" in results:
        rows += cpu_rows(results["cpu"])
    rows += gateway_rows(results.get("gateway", {}))
    rows += tracker_rows(t)
    return aligned(rows)


def gateway_rows(g: dict) -> list[tuple[str, str, str]]:
    if not g or "skipped" in g:
        return [("per-host peer's gateway", "skipped", g.get("skipped", ""))] if g else []
    size = f"{g['bytes'] / GiB:g} GiB" if g["bytes"] >= GiB else f"{g['bytes'] / MiB:g} MiB"
    return [
        (f"{size} cached, through the gateway / nginx, to curl", f"{g['gateway_cached_seconds']:.2f} s / {g['nginx_seconds']:.2f} s",
         f"{g['gateway_over_nginx_throughput']:.2f}x nginx's throughput ({g['gateway_mb_per_s']:.0f} MB/s)"),
        ("first byte of an uncached file / one chunk from its seeder", f"{g['first_byte_seconds'] * 1000:.1f} ms / {g['one_chunk_seconds'] * 1000:.1f} ms",
         f"{g['first_byte_over_one_chunk']:.1f}x"),
    ]


def aligned(rows: list[tuple[str, str, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b_:>22}  {c}" for a, b_, c in rows)


def tracker_rows(t: dict) -> list[tuple[str, str, str]]:
    rows = [
        ("tracker capacity (one core)", f"{t['requests_per_second']:.0f} req/s", ""),
        ("tracker latency at half load p50 / p99", f"{t['half_load']['p50_ms']:.2f} / {t['half_load']['p99_ms']:.2f} ms", ""),
        ("tracker memory, 100,000 seeders", f"{t['rss_mb_100k_seeders']:.0f} MB", ""),
    ]
    for replicas, r in t.get("redis", {}).items():
        ratio = r["requests_per_second"] / t["requests_per_second"]
        rows.append((f"tracker on Redis, {replicas} replica(s): capacity", f"{r['requests_per_second']:.0f} req/s",
                     f"{ratio:.2f}x the memory store"))
        rows.append((f"tracker on Redis, {replicas} replica(s): half load p50 / p99",
                     f"{r['half_load']['p50_ms']:.2f} / {r['half_load']['p99_ms']:.2f} ms", ""))
    f = t.get("failover")
    if f:
        for how in ("killed", "frozen"):
            lookups, beats = f[how]["lookup_seconds"], f[how]["heartbeat_seconds"]
            rows.append((f"replica {how}: to the next lookup / heartbeat (max of {len(beats)})",
                         f"{max(lookups):.3f} s / {max(beats):.2f} s", f"heartbeat interval {f['heartbeat_interval']:g} s"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, not the product")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="where the results go (default bench/results/latest.json, "
                        "or tracker.json with --only tracker)")
    parser.add_argument("--only", choices=["tracker", "gateway", "cpu"], help="run one part: tracker (the memory and Redis "
                        "stores, one and two replicas, failover), gateway (the per-host peer's HTTP gateway), cpu (CPU "
                        "per GiB of each role, plain and TLS, beside hashlib, the raw stream and libtorrent)")
    args = parser.parse_args()
    if args.only == "cpu":
        return only_cpu(args.quick, 1 if args.quick else args.repeat, args.out or RESULTS / "cpu.json")
    if args.only == "tracker":
        return only_tracker(args.quick, args.out or RESULTS / "tracker.json")
    if args.only == "gateway":
        return only_gateway(args.quick, 1 if args.quick else args.repeat, args.out or RESULTS / "gateway.json")
    args.out = args.out or RESULTS / "latest.json"
    main_size = 16 * MiB if args.quick else GiB
    sizes = {"s16m.bin": 16 * MiB} if args.quick else {
        "s16m.bin": 16 * MiB, "s64m.bin": 64 * MiB, "s256m.bin": 256 * MiB, "main.bin": GiB, "s4g.bin": 4 * GiB}
    many_size = 16 * MiB if args.quick else 256 * MiB  # 32 chunks: enough for sharing to show, even on a busy machine
    repeat = 1 if args.quick else args.repeat
    with tempfile.TemporaryDirectory(prefix="p2p-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        print(f"writing test files in {work}", flush=True)
        files = {"main.bin": random_file(work / "seed" / "main.bin", main_size)}
        for name, size in sizes.items():
            files.setdefault(name, random_file(work / "seed" / name, size))
        files["many.bin"] = random_file(work / "seed" / "many.bin", many_size)
        results: dict = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "cpu": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "")},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "quick": args.quick, "repeat": repeat, "main_bytes": main_size, "many_bytes": many_size,
        }
        with LocalSwarm(work, heartbeat=30) as swarm:
            swarm.start_tracker()
            print("seeders hashing", flush=True)
            all_files = list(dict.fromkeys(files.values()))
            for _ in range(5):  # the first hashes; the others start from its manifest cache
                swarm.add_seeder(all_files)
            print("baselines and downloads", flush=True)
            results["baselines"], results["swarm"] = bench_swarm(swarm, files, work, repeat, list(sizes))
            print("seeder start-up", flush=True)
            results["startup"] = bench_startup(files["main.bin"], work, swarm.tracker_addr)
        print("eight leechers, sharing and not", flush=True)
        results["many_leechers"] = bench_many_leechers(files["many.bin"], work, 1 if args.quick else 2)
        print("a seeder killed mid-download", flush=True)
        results["fault"] = bench_seeder_killed(files, work, repeat)
        print("CPU per GiB of each role, plain and mutual TLS, beside the yardsticks", flush=True)
        results["cpu"] = bench_cpu(files["main.bin"], work, repeat)
        results["tls"] = {"plain_seconds": results["cpu"]["plain"]["seconds"], "tls_seconds": results["cpu"]["tls"]["seconds"]}
        print("the per-host peer's gateway", flush=True)
        results["gateway"] = bench_gateway(files["main.bin"], work, repeat)
        print("tracker load", flush=True)
        results["tracker"] = bench_tracker(2.0 if args.quick else 5.0, work, 1 if args.quick else 3)
    results["baselines"]["tcp_hash_ratio"] = statistics.median(results["baselines"]["ratio_per_round"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    if not args.quick:
        from .charts import draw
        from .readme import update

        draw(results, args.out.parent)
        if args.out.resolve() == (RESULTS / "latest.json").resolve():
            update(results)
    print(f"results in {args.out}")
    return 0


def only_cpu(quick: bool, repeat: int, out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="p2p-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        data = random_file(Path(tmp) / "seed" / "main.bin", 16 * MiB if quick else GiB)
        results = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(), "repeat": repeat,
            "cpu": bench_cpu(data, Path(tmp), repeat),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(aligned(cpu_rows(results["cpu"])))
    if not quick and out.resolve() == (RESULTS / "cpu.json").resolve():
        from .readme import update_cpu

        update_cpu(results["cpu"], results["date"])
    print(f"results in {out}")
    return 0


def only_gateway(quick: bool, repeat: int, out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="p2p-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        data = random_file(Path(tmp) / "seed" / "main.bin", 16 * MiB if quick else GiB)
        results = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "gateway": bench_gateway(data, Path(tmp), repeat),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(aligned(gateway_rows(results["gateway"])))
    print(f"results in {out}")
    return 0


def only_tracker(quick: bool, out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="p2p-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        results = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "tracker": bench_tracker(2.0 if quick else 5.0, Path(tmp), 1 if quick else 3),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(aligned(tracker_rows(results["tracker"])))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
