"""Docker Swarm mode, for real: a one-node swarm (initialised here when the engine is in none,
and left again afterwards, only then), the stack of docker-stack.yml deployed, a download checked
byte for byte, the file fetched exactly through the node's peer gateway (and refused to an address
that is not the node's loopback), the seeders scaled, both tracker replicas scraped, the stack
removed."""

import hashlib
import json
import os
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.ci import under_ci
from tests.host_tools import host_tool

from .conftest import REPO

MIB = 1 << 20


def docker(*args: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def wait_for(condition, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(every)
    return value


@pytest.fixture
def one_node_swarm(docker_ready):
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    if state not in ("active", "inactive"):
        message = f"the engine's swarm state is {state!r}: neither in a swarm nor free to make one"
        pytest.fail(message) if under_ci() else pytest.skip(message)
    created = state == "inactive"
    if created:  # on loopback: this node talks to no one
        docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
    yield
    if created:
        docker("swarm", "leave", "--force")


def demo_bytes(size: int, seed: int) -> bytes:
    """What the stack's seeders write when their folder is empty (docker-stack.yml)."""
    rng = random.Random(seed)
    return b"".join(rng.randbytes(min(MIB, size - start)) for start in range(0, size, MIB))


def tasks(stack: str, service: str) -> list[str]:
    out = docker("service", "ps", f"{stack}_{service}", "--format", "{{.CurrentState}}", check=False).stdout
    return [line for line in out.splitlines() if line]


def container_of(stack: str, service: str) -> str:
    out = docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_{service}").stdout.split()
    return out[0] if out else ""


def complete_holders(stack: str) -> int:
    """Complete holders of demo.bin, as the tracker replicas tell a leecher on the stack's network."""
    listing = docker("run", "--rm", "--network", f"{stack}_p2p", "p2p-leecher:latest", "--list", "--tracker", "tracker:6969",
                     check=False).stdout
    rows = [line.split() for line in listing.splitlines() if line.startswith("demo.bin ")]
    return int(rows[0][2]) if rows else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def outside_address() -> str | None:
    """This host's address on its way out (no packet is sent), as another host would reach it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_stack_deploys_downloads_exactly_scales_and_is_removed(images, one_node_swarm, tmp_path):
    curl = host_tool("curl", "curl")
    stack = f"p2ptest{os.getpid()}"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    size, seed = 16 * MIB, 4242
    gateway = free_port()  # published on every interface of the node, in host mode
    env = {
        **os.environ, **images, "DOWNLOAD_DIR": str(downloads), "DEMO_SIZE_MIB": "16", "DEMO_SEED": str(seed),
        "SEEDERS": "2", "TRACKERS": "2", "HEARTBEAT_INTERVAL": "2", "PEER_HTTP_PORT": str(gateway),
    }
    docker("stack", "deploy", "--compose-file", "docker-stack.yml", stack, cwd=REPO, env=env, timeout=300)
    try:
        def leecher_done() -> str | None:  # (attempts before the trackers answer fail, and are retried)
            return next((s for s in tasks(stack, "leecher") if s.startswith("Complete")), None)

        try:
            wait_for(leecher_done, 300, "the leecher's download")
        except TimeoutError:
            logs = docker("service", "logs", f"{stack}_leecher", check=False)
            pytest.fail(f"no download: {tasks(stack, 'leecher')}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        expected = hashlib.sha256(demo_bytes(size, seed)).digest()
        assert hashlib.sha256((downloads / "demo.bin").read_bytes()).digest() == expected

        # The node's peer: curl on the node through its gateway gets the exact file (the peer
        # fetches it from the swarm as it sends it, and keeps it in its cache) ...
        peer = wait_for(lambda: container_of(stack, "peer"), 120, "the peer's container")
        wait_for(lambda: docker("inspect", "--format", "{{.State.Health.Status}}", peer).stdout.strip() == "healthy",
                 120, "the peer healthy (registered)")
        url = f"http://127.0.0.1:{gateway}/files/demo.bin"
        fetched = subprocess.run([curl, "--silent", "--show-error", "--fail", url], capture_output=True, timeout=300)
        assert fetched.returncode == 0, fetched.stderr.decode()
        assert hashlib.sha256(fetched.stdout).digest() == expected
        # ... and anyone who reaches the same port from elsewhere (here the node's own outside
        # address, which is not the node's loopback) is refused.
        outside = outside_address()
        if outside is not None:
            status, body = http_get(f"http://{outside}:{gateway}/files/demo.bin")
            assert status == 403 and b"forbidden" in body, (status, body[:200])

        # Scaled: a third seeder registers with the replicas, beside the two and the node's peer,
        # which holds the file now.
        docker("service", "scale", "--detach", f"{stack}_seeder=3")
        wait_for(lambda: complete_holders(stack) == 4, 120, "3 seeders and the peer registered")

        # Prometheus finds both tracker replicas (endpoint_mode dnsrr) and scrapes them.
        def trackers_up() -> bool:
            probe = docker(
                "run", "--rm", "--network", f"{stack}_p2p", "--entrypoint", "python3", "p2p-leecher:latest", "-c",
                "import urllib.request; print(urllib.request.urlopen('http://prometheus:9090/api/v1/targets').read().decode())",
                check=False,
            )
            if probe.returncode != 0:
                return False
            targets = json.loads(probe.stdout)["data"]["activeTargets"]
            return sum(t["labels"]["job"] == "tracker" and t["health"] == "up" for t in targets) == 2

        wait_for(trackers_up, 120, "both tracker replicas scraped", every=3.0)
    finally:
        docker("stack", "rm", stack, check=False)
        wait_for(lambda: not docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={stack}").stdout.strip()
                 and not docker("network", "ls", "-q", "--filter", f"name={stack}_p2p").stdout.strip(),
                 120, "the stack's containers and network gone")
        for volume in ("seed-data", "peer-cache"):
            docker("volume", "rm", f"{stack}_{volume}", check=False)
