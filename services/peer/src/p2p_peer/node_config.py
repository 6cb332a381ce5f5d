"""`p2p-peer containerd-config`: point a node's container runtimes at its peer.

containerd reads a `hosts.toml` per registry (`<hosts dir>/<registry>/hosts.toml`, with
`config_path` set in its CRI config, or `ctr --hosts-dir`): the peer is listed as a host that
can pull and resolve, with a short dial timeout, before the registry's own `server`, so that a
peer that is down costs one failed dial and containerd goes to the registry itself. containerd
adds `?ns=<registry>` to each request it sends to a mirror: the peer picks the upstream by it.
`_default/hosts.toml` (`--default`) covers registries without a folder of their own. Docker
Engine takes mirrors for Docker Hub only: `registry-mirrors` in its daemon.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .upstream import DOCKER_HUB, parse_registries

DEFAULT_MIRROR = "http://127.0.0.1:7080"


def hosts_toml(mirror: str, server: str | None, dial_timeout: str) -> str:
    lines = ["# Written by p2p-peer containerd-config: pull through this host's peer, else from the registry.\n"]
    if server is not None:
        lines.append(f'server = "{server}"\n')
    lines += [
        "\n",
        f'[host."{mirror}"]\n',
        '  capabilities = ["pull", "resolve"]\n',
        f'  dial_timeout = "{dial_timeout}"\n',
    ]
    return "".join(lines)


def docker_daemon_json(existing: str, mirror: str) -> str:
    """daemon.json with the mirror first in `registry-mirrors`, the rest as it was."""
    config = json.loads(existing) if existing.strip() else {}
    if not isinstance(config, dict):
        raise ValueError("daemon.json is not a JSON object")
    mirrors = [m for m in config.get("registry-mirrors", []) if m.rstrip("/") != mirror.rstrip("/")]
    config["registry-mirrors"] = [mirror, *mirrors]
    return json.dumps(config, indent=2) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2p-peer containerd-config",
        description="Write containerd's hosts.toml files (and Docker's registry-mirrors) that send pulls through this host's peer.",
    )
    p.add_argument("--mirror", default=DEFAULT_MIRROR, help=f"the peer's gateway as the node reaches it (default {DEFAULT_MIRROR})")
    p.add_argument("--hosts-dir", type=Path, default=Path("/etc/containerd/certs.d"), help="containerd's config_path (default /etc/containerd/certs.d)")
    p.add_argument("--registry", action="append", default=[], help="a registry to mirror, NAME=URL, as the peer's --registry; repeatable")
    p.add_argument("--default", action="store_true", help="also write _default/hosts.toml: every other registry through the peer")
    p.add_argument("--dial-timeout", default="500ms", help="how long containerd tries to reach the peer before it goes to the registry (default 500ms)")
    p.add_argument("--docker-daemon-json", type=Path, help="also add the mirror to this Docker daemon.json's registry-mirrors (Docker Hub)")
    return p


def containerd_config(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        upstreams = parse_registries(args.registry, None)
    except ValueError as exc:
        print(f"p2p-peer containerd-config: {exc}", file=sys.stderr)
        return 2
    if not upstreams and not args.default and args.docker_daemon_json is None:
        print("p2p-peer containerd-config: name a --registry, or --default, or --docker-daemon-json", file=sys.stderr)
        return 2
    mirror = args.mirror.rstrip("/")
    try:
        for upstream in upstreams.values():
            _write(args.hosts_dir / upstream.name / "hosts.toml", hosts_toml(mirror, upstream.url, args.dial_timeout))
        if args.default:
            _write(args.hosts_dir / "_default" / "hosts.toml", hosts_toml(mirror, None, args.dial_timeout))
        if args.docker_daemon_json is not None:
            path = args.docker_daemon_json
            existing = path.read_text() if path.exists() else ""
            _write(path, docker_daemon_json(existing, mirror))
            if DOCKER_HUB not in upstreams:
                print("note: Docker sends only Docker Hub pulls to a mirror; the peer needs --registry docker.io=https://registry-1.docker.io")
    except (OSError, ValueError) as exc:
        print(f"p2p-peer containerd-config: {exc}", file=sys.stderr)
        return 1
    return 0
