"""p2p-allow-attached-networks (deploy/attached-networks.py), the wrapper that gives the peer's
gateway, in a container, the networks the container is attached to: which subnets count, how
the list is merged with P2P_HTTP_ALLOW, and that p2p-peer takes what it makes."""

import importlib.util
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from p2p_peer.main import PeerSettings

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "attached-networks.py"
_spec = importlib.util.spec_from_file_location("attached_networks", SCRIPT)
attached = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attached)

interface = ipaddress.ip_interface


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        # Compose: the project's bridge network.
        (["127.0.0.1/8", "172.20.0.3/16"], ["172.20.0.0/16"]),
        # Swarm: the stack's overlay and the node's docker_gwbridge.
        (["10.0.1.5/24", "172.19.0.3/16"], ["10.0.1.0/24", "172.19.0.0/16"]),
        # Kubernetes, a pod address in the node's pod range (bridge or kind's point-to-point links).
        (["10.244.1.7/24"], ["10.244.1.0/24"]),
        # Kubernetes, a lone /32 (Calico, Cilium): no network to admit, loopback only.
        (["192.168.33.9/32", "fd00:1::9/128"], []),
        # Link-local and loopback never; a global IPv6 prefix yes; each network once.
        (["169.254.1.2/16", "::1/128", "fe80::1/64", "fd00::2/64", "172.20.0.4/16", "172.20.0.3/16"],
         ["fd00::/64", "172.20.0.0/16"]),
    ],
)
def test_the_subnets_of_the_containers_own_addresses(addresses, expected):
    assert [str(n) for n in attached.networks_of([interface(a) for a in addresses])] == expected


def test_global_ipv6_addresses_are_read_from_proc():
    table = (
        "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
        "fd000000000000000000000000000002 04 40 00 82     eth0\n"
        "00000000000000000000000000000001 01 80 10 80       lo\n"
    )
    assert attached.ipv6_interfaces(table) == [interface("fd00::2/64")]


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ("", "172.20.0.0/16"),
        ("10.244.0.0/16", "10.244.0.0/16,172.20.0.0/16"),
        (" 10.0.0.0/8 , 172.20.0.0/16,", "10.0.0.0/8,172.20.0.0/16"),
    ],
)
def test_the_configured_list_comes_first_and_nothing_twice(configured, expected):
    assert attached.allow_list(configured, [ipaddress.ip_network("172.20.0.0/16")]) == expected


def test_the_wrapper_hands_p2p_peer_a_list_it_takes(tmp_path):
    """Run here (this host's own interfaces): the wrapper sets P2P_HTTP_ALLOW and runs the command."""
    code = "import os; print(os.environ['P2P_HTTP_ALLOW'])"
    env = {**os.environ, "P2P_HTTP_ALLOW": "10.9.0.0/16"}
    result = subprocess.run([sys.executable, str(SCRIPT), sys.executable, "-c", code],
                            env=env, capture_output=True, text=True, timeout=30, check=True)
    allow = result.stdout.strip()
    assert allow.split(",")[0] == "10.9.0.0/16"
    assert allow == attached.allow_list("10.9.0.0/16", attached.attached_networks())
    networks = PeerSettings(http_allow=allow).http_allow
    assert all(not n.is_loopback and not n.is_link_local for n in networks)
    alone = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=True)
    assert alone.stdout.strip() == allow
