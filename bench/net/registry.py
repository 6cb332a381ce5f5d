"""Container images through the registry mirror, on shaped hosts: one upstream registry host
(Debian's CNCF distribution registry) and N hosts, each with its own containerd, pulling one new
image at one moment with `ctr content fetch` (every blob of one platform, each checked against
its digest by containerd as it commits it; nothing unpacked, so the time is the transfer's).

- `mirror`: a tracker host, and on every host a p2p-peer with `--registry` and containerd's
  hosts.toml written by `p2p-peer containerd-config` (the peer first, the registry after it).
- `direct`: the same pulls straight from the registry (its hosts.toml names only the registry).

Upstream egress is the registry host's eth0 tx_bytes over the pull, so the figure trusts none
of our code. The bound is Kumar and Ross's for the image's bytes F from the registry's uplink
u_s to N hosts: max(F/u_s, F/d_min, N·F/(u_s + Σu_i)); without sharing, N·F/u_s.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tools.localswarm import free_port
from tools.oci import build_image, push

from .runner import Swarm, command
from .scenarios import MiB, Mbit
from .testbed import Host, Link, Testbed

REGISTRY_PORT = 5000
REPOSITORY, TAG = "bench/app", "v1"


def _registry_config(storage: Path, addr: str, path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}},
        "http": {"addr": addr, "secret": "bench"},
    }))
    return path


def prepare_storage(workdir: Path, size: int, layers: int, seed: int = 1):
    """The image pushed into a registry's storage folder by a registry on loopback (unshaped);
    the image, and the bytes of one platform's pull (config and layers)."""
    image = build_image(random.Random(seed), REPOSITORY, TAG, [size // layers] * layers)
    storage = workdir / "registry-storage"
    port = free_port()
    config = _registry_config(storage, f"127.0.0.1:{port}", workdir / "registry-push.yml")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                push(f"http://127.0.0.1:{port}", image)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
    config_digest = next(d for d, b in image.blobs.items() if b.startswith(b"{") and b'"amd64"' in b)
    pulled = image.blobs[config_digest].__len__() + sum(len(image.blobs[d]) for d in image.layers())
    return image, storage, pulled


def _containerd(bed: Testbed, host: Host) -> Path:
    folder = bed.workdir / f"containerd-{host.name}"
    folder.mkdir()
    socket = folder / "containerd.sock"
    config = folder / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{folder / "root"}"\nstate = "{folder / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n[ttrpc]\n  address = "{socket}.ttrpc"\n'
    )
    bed.start(host, ["containerd", "--config", str(config)], label=f"containerd-{host.name}")
    return socket


def _wait_for(paths: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not there after {timeout}s: {[str(p) for p in paths if not p.exists()]}")
        time.sleep(0.1)


def run(mode: str, n: int, size: int, layers: int, mbit: float, prepared, part_mib: int | None = None,
        logs: Path | None = None) -> dict:
    image, storage, pulled = prepared
    link = Link(mbit * Mbit, mbit * Mbit)
    with Testbed() as bed:
        swarm = Swarm(bed) if mode == "mirror" else None
        registry = bed.add_host("reg", link)
        hosts = [bed.add_host(f"n{i}", link) for i in range(1, n + 1)]
        upstream = f"{registry.ip}:{REGISTRY_PORT}"
        config = _registry_config(storage, f"{registry.ip}:{REGISTRY_PORT}", bed.workdir / "registry.yml")
        bed.start(registry, ["docker-registry", "serve", str(config)], label="registry")
        sockets = [_containerd(bed, h) for h in hosts]
        hosts_dirs = []
        for h in hosts:
            folder = bed.workdir / f"hosts-{h.name}"
            if mode == "mirror":
                done = subprocess.run([command("p2p-peer"), "containerd-config", "--mirror", "http://127.0.0.1:7080",
                                       "--hosts-dir", str(folder), "--registry", f"{upstream}=http://{upstream}"],
                                      capture_output=True, text=True, check=True)
                assert done.returncode == 0
            else:
                (folder / upstream).mkdir(parents=True)
                (folder / upstream / "hosts.toml").write_text(
                    f'server = "http://{upstream}"\n\n[host."http://{upstream}"]\n  capabilities = ["pull", "resolve"]\n')
            hosts_dirs.append(folder)
        daemons = []
        if swarm is not None:
            parts = ["--registry-part-size", f"{part_mib}MiB"] if part_mib else []
            daemons = [swarm.peer(h, "--registry", f"{upstream}=http://{upstream}", *parts, wait=False) for h in hosts]
            for d in daemons:
                d.wait_for("registered with tracker", timeout=60)
        _wait_for(sockets)
        reference = f"{upstream}/{REPOSITORY}:{TAG}"
        sent_before = bed.tx_bytes(registry)
        t0 = time.monotonic()
        pulls = [
            bed.start(h, ["ctr", "--address", str(sock), "content", "fetch", "--hosts-dir", str(folder),
                          "--platform", "linux/amd64", reference], label=f"ctr-{h.name}")
            for h, sock, folder in zip(hosts, sockets, hosts_dirs)
        ]
        finished: dict[str, float] = {}
        failures: list[str] = []
        deadline = t0 + 3 * n * pulled * 8 / (mbit * Mbit) + 60
        while len(finished) + len(failures) < n and time.monotonic() < deadline:
            for h, pull in zip(hosts, pulls):
                if h.name in finished or any(f.startswith(h.name) for f in failures):
                    continue
                code = pull.proc.poll()
                if code == 0:
                    finished[h.name] = time.monotonic() - t0
                elif code is not None:
                    failures.append(f"{h.name}: ctr exited {code}: {pull.output.strip().splitlines()[-1:]}")
            time.sleep(0.05)
        egress = bed.tx_bytes(registry) - sent_before
        # Every blob of the platform in each host's content store (containerd checked each digest).
        wanted = set(image.layers())
        for h, sock in zip(hosts, sockets):
            if h.name not in finished:
                continue
            listed = subprocess.run(["ip", "netns", "exec", h.ns, "ctr", "--address", str(sock), "content", "ls", "-q"],
                                    capture_output=True, text=True, timeout=60).stdout.split()
            if not wanted <= set(listed):
                failures.append(f"{h.name}: blobs missing from its content store")
        for d in daemons:
            d.stop(timeout=10)
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            for h, d in zip(hosts, daemons):
                (logs / f"{mode}-{h.name}.log").write_text(d.output)
            for h, pull in zip(hosts, pulls):
                (logs / f"{mode}-{h.name}-ctr.log").write_text(pull.output)
    bits = pulled * 8
    u = mbit * Mbit
    return {
        "mode": mode, "hosts": n, "part_mib": part_mib, "image_bytes": pulled, "layers": layers, "mbit": mbit,
        "completion_seconds": finished, "time_to_all": max(finished.values()) if finished and not failures else None,
        "all_verified": not failures and len(finished) == n, "failures": failures,
        "upstream_egress_bytes": egress, "upstream_egress_over_image": egress / pulled,
        "bound_seconds": max(bits / u, bits / u, n * bits / (u + n * u)),
        "bound_without_sharing_seconds": n * bits / u,
    }


def main(argv: list[str]) -> dict:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.net registry")
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--mbit", type=float, default=50)
    p.add_argument("--only", choices=["mirror", "direct"])
    p.add_argument("--part-mib", type=int, help="the peers' --registry-part-size (default theirs)")
    p.add_argument("--logs", type=Path, help="keep every peer's and ctr's output in this folder")
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="p2pbench-registry-") as data:
        prepared = prepare_storage(Path(data), args.size_mib * MiB, args.layers)
        for mode in ([args.only] if args.only else ["mirror", "direct"]):
            result = run(mode, args.hosts, args.size_mib * MiB, args.layers, args.mbit, prepared, args.part_mib, args.logs)
            results[mode] = result
            shown = (f"{result['time_to_all']:.1f} s ({result['time_to_all'] / result['bound_seconds']:.2f}x the bound "
                     f"{result['bound_seconds']:.1f} s), upstream sent {result['upstream_egress_over_image']:.2f} x the image"
                     if result["all_verified"] else "FAILED " + "; ".join(result["failures"]))
            print(f"registry {mode}: {shown}", flush=True, file=sys.stderr)
    return results
