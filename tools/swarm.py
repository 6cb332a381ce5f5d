"""`make swarm`: a tracker, three seeders and a leecher as local processes on a demo file.
`--peer` (`make swarm SWARM_ARGS=--peer`) then starts a per-host peer (p2p-peer) and fetches the
file again with curl through its HTTP gateway, as any program on the host would."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .localswarm import LocalSwarm, random_file, sha256_file


def through_the_peer(swarm: LocalSwarm, work: Path, demo: Path) -> int:
    """A p2p-peer, then `curl` of the demo file through its gateway; one line with the time."""
    curl = shutil.which("curl")
    if curl is None:
        print("--peer needs curl: apt-get install curl", file=sys.stderr)
        return 1
    peer = swarm.add_peer(work / "peer-cache")
    url = f"{peer.url}/files/{demo.name}"
    copy = work / "through-peer" / demo.name
    copy.parent.mkdir()
    started = time.perf_counter()
    fetched = subprocess.run([curl, "--silent", "--show-error", "--fail", "--output", str(copy), url],
                             capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if fetched.returncode != 0:
        print(f"curl {url} failed: {fetched.stderr.strip()}", file=sys.stderr)
        print(peer.output, file=sys.stderr)
        return 1
    same = sha256_file(copy) == sha256_file(demo)
    size = demo.stat().st_size
    print(
        f"peer: {size / 2**20:.0f} MiB with curl through p2p-peer's gateway ({url}) in {elapsed:.2f}s "
        f"({size / elapsed / 1e6:.0f} MB/s, fetched from the seeders as it was sent), "
        f"sha256 {'matches' if same else 'DIFFERS'}"
    )
    return 0 if same else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=int(os.environ.get("SWARM_SIZE_MIB", "256")))
    parser.add_argument("--seeders", type=int, default=3)
    parser.add_argument("--peer", action="store_true", help="then fetch the file with curl through a p2p-peer's gateway")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2p-swarm-") as tmp:
        work = Path(tmp)
        demo = work / "seed" / "demo.bin"
        random_file(demo, args.size_mib << 20)
        print(f"demo file: {demo.name}, {args.size_mib} MiB; starting a tracker and {args.seeders} seeders", flush=True)
        with LocalSwarm(work) as swarm:
            swarm.start_tracker()
            for _ in range(args.seeders):
                swarm.add_seeder([demo])
            started = time.perf_counter()
            leecher = swarm.leecher(demo.name, work / "downloads", "--min-seeders", str(args.seeders))
            rc = leecher.wait(600)
            elapsed = time.perf_counter() - started
            for event in leecher.events():
                if event.get("event", "").startswith(("Download complete", "Successfully downloaded")):
                    print(event["event"])
            if rc != 0:
                print(leecher.output, file=sys.stderr)
                return rc
            same = sha256_file(work / "downloads" / demo.name) == sha256_file(demo)
            size = demo.stat().st_size
            print(
                f"summary: {size / 2**20:.0f} MiB from {args.seeders} seeders in {elapsed:.2f}s "
                f"({size / elapsed / 1e6:.0f} MB/s, leecher process start to verified file), "
                f"sha256 {'matches' if same else 'DIFFERS'}"
            )
            if not same:
                return 1
            return through_the_peer(swarm, work, demo) if args.peer else 0


if __name__ == "__main__":
    raise SystemExit(main())
