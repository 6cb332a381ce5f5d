#!/usr/bin/env python3
"""p2p-allow-attached-networks COMMAND...: run COMMAND (p2p-peer) with the networks this
container is attached to added to P2P_HTTP_ALLOW, so that the peer's gateway answers the
containers on those networks and no one else (README, "The peer's gateway in a container").

An attached network is the subnet of one of the container's own addresses (the primary IPv4
address of each interface, every global IPv6 one), never loopback (always allowed anyway),
link-local, or a lone /32 or /128. Under Compose that is the project's network, whose gateway
address is also where the host's published port is reached from; under Swarm, the stack's
overlay and the node's docker_gwbridge (containers there cannot reach each other: only the node
does, from the bridge's gateway address); under Kubernetes, where the network plugin gives a pod
an address in its node's pod range (a bridge, or point-to-point links as kind's), that range:
the node's pods. A client elsewhere keeps its own address (host-mode publishing and hostPort
translate the destination only) and is refused; a packet forged with a source inside an attached
network has its answer routed onto that network, not back to the forger, so no connection opens.

`p2p-allow-attached-networks` alone prints the list it would pass on.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SIOCGIFADDR, SIOCGIFNETMASK = 0x8915, 0x891B
IPV6_GLOBAL_SCOPE = 0x00


def networks_of(interfaces: Iterable[Interface]) -> list[Network]:
    """The subnets of these addresses worth admitting, each once, in order."""
    found: list[Network] = []
    for interface in interfaces:
        network = interface.network
        if interface.ip.is_loopback or interface.ip.is_link_local or network.num_addresses == 1:
            continue
        if network not in found:
            found.append(network)
    return found


def ipv4_interfaces() -> list[ipaddress.IPv4Interface]:
    """The primary IPv4 address and netmask of each interface (no iproute2 in the image)."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)[20:24]
                mask = fcntl.ioctl(probe.fileno(), SIOCGIFNETMASK, request)[20:24]
            except OSError:
                continue  # no IPv4 address on this one
            found.append(ipaddress.IPv4Interface(f"{socket.inet_ntoa(address)}/{socket.inet_ntoa(mask)}"))
    return found


def ipv6_interfaces(table: str) -> list[ipaddress.IPv6Interface]:
    """Global addresses in /proc/net/if_inet6: `address ifindex prefixlen scope flags name`."""
    found = []
    for line in table.splitlines():
        fields = line.split()
        if len(fields) == 6 and int(fields[3], 16) == IPV6_GLOBAL_SCOPE:
            address = ipaddress.IPv6Address(int(fields[0], 16))
            found.append(ipaddress.IPv6Interface((address, int(fields[2], 16))))
    return found


def attached_networks() -> list[Network]:
    try:
        ipv6 = ipv6_interfaces(Path("/proc/net/if_inet6").read_text())
    except OSError:
        ipv6 = []  # IPv6 is off in this container
    return networks_of([*ipv4_interfaces(), *ipv6])


def allow_list(configured: str, networks: list[Network]) -> str:
    """P2P_HTTP_ALLOW as configured, then the attached networks it does not name yet."""
    parts = [part.strip() for part in configured.split(",") if part.strip()]
    return ",".join(parts + [str(n) for n in networks if str(n) not in parts])


def main(argv: list[str]) -> int:
    allow = allow_list(os.environ.get("P2P_HTTP_ALLOW", ""), attached_networks())
    if not argv:
        print(allow)
        return 0
    os.environ["P2P_HTTP_ALLOW"] = allow
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
