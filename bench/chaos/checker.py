"""The checker: reads a soak's folder (history.jsonl, catalogue.json, logs/) after the run, and
nothing else, and judges five properties, one verdict line each, then the run's figures:

  exact       every download that reported success holds the exact bytes (SHA-256 of the file)
  completion  every download finished; every failed attempt failed with one clear line while a
              fault was on (or within RECOVERY seconds of one ending), never on a quiet swarm;
              every download finished within `bound(size)` seconds (workload.bound says why) of
              the later of its start and the end of the last fault that overlapped it
  resources   no process of ours grew: for each process that lived through the run, the median
              RSS of the last third at most 1.5x that of the first third plus 64 MiB, and its open
              descriptors at most 32 more than the first third's most
  logs        no traceback in any log; every error line of ours is one of the documented ones
              (DOCUMENTED: each names the README passage that documents it), no line that is not a
              log event at all, and no process that exited without the nemesis asking
  registry    lookups resumed within REDIS_RESUME seconds of every Redis fault's start (Sentinel's
              down-after, its failover and a tracker's next sweep): a tracker's "registry store
              unavailable" line is explained only by a Redis fault that began at most that long
              before it, or by a fault on the tracker's host or on the Redis and sentinel hosts
              (or cutting them off) at that moment
  egress      the origin (both seeders' interface bytes) sent at most EGRESS_MULTIPLE times what
              the workload needed from it (`needed_from_origin`): the bytes of each download that
              started when no other peer held a complete copy, by the history and the peers' logs
              (what their caches evicted)
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from datetime import datetime
from pathlib import Path

from .workload import bound

RECOVERY = 15.0
# Sentinel's down-after (2 s) and failover timeout (10 s), and a tracker's sweep (2 s), from
# hosts.py; a restarted primary that comes back as a replica is turned back within that too.
SWEEP = 2.0  # a tracker sweeps (and logs a store error) every heartbeat interval, 2 s
REDIS_RESUME = 2.0 + 10.0 + SWEEP  # seconds after a fault ends during which its effects may still fail an attempt
EGRESS_MULTIPLE = 2.5  # duplicates in endgame, transfers cut by faults and sent again
OURS = re.compile(r"^(t\d|s\d|p\d)$")

# Error lines our services may log, each documented in the README (section in the comment).
DOCUMENTED = [
    re.compile(p) for p in (
        r"^registry store (gave no answer within|unreachable)",  # Tracker replicas: Redis down or slow
        r"^tracker (unreachable|did not answer)",  # Reliability: the tracker restarts
        r"^cannot reach any tracker",
        r"^no holder",  # the gateway's 504
        r"^download failed",  # the gateway's 502
        r"^cache: ",  # the peer's cache (full disk: 507)
        r"^no room",
        r"^gateway: ",
    )
]


REDIS_KINDS = {"redis_failover", "redis_empty", "redis_stall"}


def _wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _explains(fault: dict, at: float, involved: set[str]) -> bool:
    """Whether a fault explains a tracker's store error at `at`: a Redis fault in the
    REDIS_RESUME seconds after it began or after it ended (the old primary back, demoted), or a
    fault on (or cutting off) a host the tracker needs for its registry, while it is on."""
    start, end = fault["started"], fault["ended"] if fault["ended"] is not None else at
    if fault["kind"] in REDIS_KINDS:
        return start <= at <= start + REDIS_RESUME or end <= at <= end + REDIS_RESUME
    hit = fault["target"] in involved or involved & set(fault.get("detail", {}).get("from", []))
    return bool(hit) and start - 1 <= at <= end + 3


def load(folder: Path) -> tuple[dict, list[dict], dict]:
    records = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines() if line.strip()]
    run = next(r for r in records if r["type"] == "run")
    catalogue = json.loads((folder / "catalogue.json").read_text())
    return run, records, catalogue


def _overlapping(faults: list[dict], start: float, end: float, grace: float = 0.0) -> list[dict]:
    return [f for f in faults if f["started"] is not None and f["started"] <= end and (f["ended"] or end) + grace >= start]


def needed_from_origin(downloads: list[dict], catalogue: dict, gone: list[tuple[float, str, str]] = ()) -> int:
    """Bytes only the origin could send: each download that started while no other peer held a
    complete copy of its file. A peer holds a file from its download's success until a download
    there that dropped it first, or until its cache let it go (`gone`: time, peer, file name, from
    its log's "evicting" and changed-on-disk lines). A peer killed or cut off still counts as a
    holder, so this errs low, against the origin."""
    events = sorted(
        [(t, 0, {"host": host, "name": name}) for t, host, name in gone]
        + [(d["started"], 1, d) for d in downloads if d["started"] is not None]
        + [(d["ended"], 2, d) for d in downloads if d["status"] == "ok"],
        key=lambda e: (e[0], e[1]),
    )
    holders: dict[str, set[str]] = {}
    needed = 0
    for _, kind, d in events:
        held = holders.setdefault(d["name"], set())
        if kind == 0:
            held.discard(d["host"])
        elif kind == 2:
            held.add(d["host"])
        else:
            if d["drop_first"]:
                held.discard(d["host"])
            if not held:
                needed += catalogue[d["name"]]["size"]
    return needed


def let_go(folder: Path, wall_start: float) -> list[tuple[float, str, str]]:
    """When each peer's cache let a file go: (seconds into the run, peer, file name)."""
    gone = []
    for log in sorted((folder / "logs").glob("p*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if '"evicting"' in line or '"cache: a file changed on disk' in line:
                event = json.loads(line)
                if event.get("file"):
                    gone.append((_wall(event["timestamp"]) - wall_start, log.stem, event["file"]))
    return gone


def check(folder: Path) -> tuple[bool, list[str]]:
    run, records, catalogue = load(folder)
    faults = [r for r in records if r["type"] == "fault"]
    downloads = [r for r in records if r["type"] == "download"]
    samples = [r for r in records if r["type"] == "sample"]
    egress = next((r for r in records if r["type"] == "egress"), None)
    lines, held = [], []

    def verdict(name: str, ok: bool, text: str) -> None:
        held.append(ok)
        lines.append(f"{'PASS' if ok else 'FAIL'} {name}: {text}")

    # exact
    done = [d for d in downloads if d["status"] == "ok"]
    wrong = [d for d in done if d["sha256"] != catalogue[d["name"]]["sha256"]]
    verdict("exact", not wrong and bool(done),
            f"{len(done)} downloads reported success, {len(wrong)} with other bytes"
            + "".join(f"; download {d['id']} ({d['name']} at {d['host']})" for d in wrong[:5]))

    # completion
    problems = []
    ratios = []
    for d in downloads:
        size = catalogue[d["name"]]["size"]
        if d["status"] != "ok":
            problems.append(f"download {d['id']} ({d['name']} at {d['host']}) {d['status']}: "
                            f"{d['attempts'][-1]['error'] if d['attempts'] else 'never started'}")
            continue
        for attempt in d["attempts"]:
            if "error" not in attempt:
                continue
            error = attempt["error"]
            if not error or "\n" in error or error == "no output":
                problems.append(f"download {d['id']}: an attempt failed without a clear line ({error!r})")
            if not _overlapping(faults, attempt["start"], attempt["end"], RECOVERY):
                problems.append(f"download {d['id']} ({d['name']} at {d['host']}): an attempt failed with no fault on: {error}")
        touching = _overlapping(faults, d["started"], d["ended"])
        since = max([d["started"], *[f["ended"] for f in touching if f["ended"] is not None]])
        took = d["ended"] - since
        ratios.append(took / bound(size))
        if took > bound(size):
            problems.append(f"download {d['id']} ({d['name']} at {d['host']}) took {took:.1f} s after its last fault, "
                            f"over its bound of {bound(size):.0f} s")
    failed_attempts = sum(1 for d in downloads for a in d["attempts"] if "error" in a)
    verdict("completion", not problems and bool(downloads),
            f"{len(done)} of {len(downloads)} downloads finished ({failed_attempts} failed attempts, each during a fault "
            f"or within {RECOVERY:g} s of one); slowest after its last fault {max(ratios, default=0):.2f}x its bound "
            "(45 s + size at 2 MiB/s)" + "".join(f"; {p}" for p in problems[:8]))

    # resources
    span = max([s["t"] for s in samples], default=0)
    grown = []
    checked = 0
    by_life: dict[tuple[str, int], list[dict]] = {}
    for s in samples:
        if OURS.match(s["proc"]) and s.get("state") != "T":
            by_life.setdefault((s["proc"], s["pid"]), []).append(s)
    for (name, pid), life in sorted(by_life.items()):
        first = [s for s in life if s["t"] < span / 3]
        last = [s for s in life if s["t"] > 2 * span / 3]
        if len(first) < 3 or len(last) < 3:
            continue
        checked += 1
        rss_first, rss_last = statistics.median(s["rss"] for s in first), statistics.median(s["rss"] for s in last)
        fds_first, fds_last = max(s["fds"] for s in first), max(s["fds"] for s in last)
        if rss_last > 1.5 * rss_first + (64 << 20):
            grown.append(f"{name} (pid {pid}) RSS {rss_first / 2**20:.0f} -> {rss_last / 2**20:.0f} MiB")
        if fds_last > fds_first + 32:
            grown.append(f"{name} (pid {pid}) descriptors {fds_first} -> {fds_last}")
    peak = max((s["rss"] for s in samples if OURS.match(s["proc"])), default=0)
    verdict("resources", not grown and checked > 0,
            f"{checked} processes lived through the run; none grew (RSS last third <= 1.5x first + 64 MiB, "
            f"descriptors <= first + 32); peak RSS {peak / 2**20:.0f} MiB" + "".join(f"; {g}" for g in grown[:8]))

    # logs
    bad = []
    errors = Counter()
    for log in sorted((folder / "logs").glob("*.log")):
        name = log.stem
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            if "Traceback" in line:
                bad.append(f"{name}.log:{number}: a traceback")
            if not OURS.match(name) or line.startswith("# chaos:") or not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                bad.append(f"{name}.log:{number}: not a log event: {line[:120]}")
                continue
            if not isinstance(event, dict):
                bad.append(f"{name}.log:{number}: not a log event: {line[:120]}")
                continue
            if event.get("level") in ("error", "critical"):
                text = str(event.get("event", ""))
                errors[text[:60]] += 1
                if not any(p.search(text) for p in DOCUMENTED):
                    bad.append(f"{name}.log:{number}: an undocumented error line: {text[:160]}")
    for exit in (r for r in records if r["type"] == "exit"):
        bad.append(f"{exit['proc']} exited unasked (code {exit['code']}) at {exit['t']:.1f} s")
    verdict("logs", not bad,
            f"no traceback, no process exited unasked; {sum(errors.values())} error lines, every one documented" if not bad
            else f"{len(bad)} problems" + "".join(f"; {b}" for b in bad[:8]))

    # registry
    wall_start = run["wall_start"]
    registry_hosts = {"r1", "r2", "t1"}  # Redis and the sentinels
    late = []
    store_errors = 0
    for log in sorted((folder / "logs").glob("t*.log")):
        tracker = log.stem
        for line in log.read_text(errors="replace").splitlines():
            if '"registry store unavailable"' not in line:
                continue
            store_errors += 1
            at = _wall(json.loads(line)["timestamp"]) - wall_start
            explained = any(_explains(f, at, registry_hosts | {tracker}) for f in faults)
            if not explained:
                late.append((tracker, at))
    # One sweep's slow answer alone (the 0.5 s registry timeout on a loaded machine) is a blip a
    # client does not see (it asks the other replica); two in a row is a registry not back.
    unresumed = [f"{t} at {a:.1f} s" for t, a in late if any(t == t2 and 0 < a2 - a <= 2 * SWEEP + 0.5 for t2, a2 in late)]
    redis_faults = [f for f in faults if f["kind"] in REDIS_KINDS]
    verdict("registry", not unresumed,
            f"{len(redis_faults)} Redis faults; {store_errors} store errors at the trackers, each within {REDIS_RESUME:g} s of a "
            f"Redis fault's start or end, during a fault on a tracker or Redis host, or alone ({len(late)} single slow answers)"
            + "".join(f"; not resumed: {x}" for x in unresumed[:8]))

    # egress
    needed = needed_from_origin(downloads, catalogue, let_go(folder, run["wall_start"]))
    sent = sum(egress["seeders_tx"].values()) if egress else None
    fetched = sum(egress["peers_rx"].values()) if egress else None
    verdict("egress", sent is not None and needed > 0 and sent <= EGRESS_MULTIPLE * needed,
            f"the origin sent {sent / 2**20:.0f} MiB = {sent / max(needed, 1):.2f}x the {needed / 2**20:.0f} MiB the workload "
            f"needed from it (bound {EGRESS_MULTIPLE:g}x); the peers received {fetched / 2**20:.0f} MiB"
            if sent is not None else "no egress record (the run did not finish)")

    kinds = Counter(f["kind"] for f in faults)
    moved = sum(catalogue[d["name"]]["size"] for d in done)
    lines.append(
        f"figures: seed {run['seed']}, {run['minutes']:g} min; {len(faults)} faults ("
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + f"); {len(downloads)} downloads, "
        f"{moved / 2**30:.2f} GiB read through the gateways; {failed_attempts} failed attempts"
    )
    ok = all(held)
    lines.append(f"VERDICT: {'PASS' if ok else 'FAIL'} ({sum(held)} of {len(held)} properties held)")
    return ok, lines
