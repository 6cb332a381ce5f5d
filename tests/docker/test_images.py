"""Each image builds (air-gapped where no registry answers), runs as non-root, turns healthy."""

import subprocess
import time
import uuid

import docker
import pytest


def wait_healthy(container, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        state = container.attrs["State"]
        if state["Health"]["Status"] == "healthy":
            return
        assert state["Status"] == "running", container.logs().decode()
        time.sleep(0.5)
    raise AssertionError(f"not healthy within {timeout}s:\n{container.logs().decode()}")


@pytest.fixture
def network():
    client = docker.from_env()
    net = client.networks.create(f"p2p-test-{uuid.uuid4().hex[:8]}")
    containers = []
    yield client, net, containers
    for container in containers:
        container.remove(force=True)
    net.remove()


def metrics_of(container, port: int) -> str:
    code = f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    result = container.exec_run(["python3", "-c", code])
    assert result.exit_code == 0, result.output
    return result.output.decode()


def sample(metrics: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name))


def test_images_build_offline_when_no_registry_answers(images):
    client = docker.from_env()
    official_pullable = images["BASE_IMAGE"].startswith("python:")
    if not official_pullable:  # the air-gapped path: a Debian base made here, wheels from the host
        assert images["OFFLINE"] == "1"
        out = client.containers.run(images["BASE_IMAGE"], ["cat", "/etc/debian_version"], remove=True)
        assert out.decode().startswith("12.")
    for role in ("tracker", "seeder", "peer"):
        config = client.images.get(f"p2p-{role}:latest").attrs["Config"]
        assert config["User"] == "p2p"
        assert config["Entrypoint"] == [f"p2p-{role}"]
    leecher = client.images.get("p2p-leecher:latest").attrs["Config"]
    assert leecher["Entrypoint"] == ["p2p-as-owner", "p2p-leecher"]
    for image in (images["PROMETHEUS_IMAGE"], images["PUSHGATEWAY_IMAGE"]):
        client.images.get(image)


def test_tracker_and_seeder_turn_healthy_without_being_counted_as_clients(images, network):
    """Healthy once serving (a seeder: once registered), checked without a probe connection:
    after several healthchecks the tracker has seen only the seeder, and the seeder no peer."""
    client, net, containers = network
    env = {"P2P_HEARTBEAT_INTERVAL": "2"}
    tracker = client.containers.run("p2p-tracker:latest", detach=True, network=net.name, environment=env)
    containers.append(tracker)
    net.disconnect(tracker)
    net.connect(tracker, aliases=["tracker"])
    seeder = client.containers.run(
        "p2p-seeder:latest", ["-f", "/etc/os-release", "--tracker", "tracker:6969"], detach=True, network=net.name
    )
    containers.append(seeder)
    wait_healthy(tracker)
    wait_healthy(seeder)
    deadline = time.monotonic() + 60
    while len(seeder.attrs["State"]["Health"]["Log"]) < 3 and time.monotonic() < deadline:
        time.sleep(1)
        seeder.reload()
    assert len(seeder.attrs["State"]["Health"]["Log"]) >= 3
    assert sample(metrics_of(seeder, 9102), "p2p_seeder_connections_total") == 0
    tracker_metrics = metrics_of(tracker, 9101)
    assert sample(tracker_metrics, 'p2p_tracker_datagrams_total{type="connect"}') <= 2  # the seeder's own
    assert sample(tracker_metrics, "p2p_tracker_lookups_total") == 0


@pytest.mark.parametrize("role", ["tracker", "seeder", "peer"])
def test_healthcheck_needs_a_fresh_health_file(images, role):
    """The image's own HEALTHCHECK command, run where the service is not running."""
    client = docker.from_env()
    test = client.images.get(f"p2p-{role}:latest").attrs["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD-SHELL"
    check = test[1]

    def run(setup: str) -> int:
        result = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "sh", f"p2p-{role}:latest", "-c", f"{setup}; {check}"],
            capture_output=True, text=True,
        )
        return result.returncode

    assert run("true") != 0  # no file: the service never got going
    assert run('touch -d "-1 minute" "$P2P_HEALTH_FILE"') != 0  # stale: the service stalled
    assert run('touch "$P2P_HEALTH_FILE"') == 0


@pytest.mark.parametrize("role", ["leecher", "peer"])
def test_the_image_runs_its_command(images, role):
    result = subprocess.run(["docker", "run", "--rm", f"p2p-{role}:latest", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith(f"p2p-{role} ")


def gateway_status(client, network: str, address: str) -> int:
    """The status a container on `network` gets for GET /files from a peer's gateway."""
    code = (
        "import urllib.request, urllib.error\n"
        "try:\n"
        f"    print(urllib.request.urlopen('http://{address}:7080/files', timeout=10).status)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code)\n"
    )
    out = client.containers.run("p2p-leecher:latest", ["-c", code], entrypoint="python3", network=network, remove=True)
    return int(out.decode().split()[-1])


def test_the_peer_turns_healthy_and_its_gateway_admits_only_whom_it_is_told(images, network):
    """Healthy once registered. The image listens on the container's network but admits only
    loopback: another container gets 403. Started through p2p-allow-attached-networks (as
    Compose, the stack and Kubernetes start it), the containers of its network get 200."""
    client, net, containers = network
    tracker = client.containers.run("p2p-tracker:latest", detach=True, network=net.name)
    containers.append(tracker)
    net.disconnect(tracker)
    net.connect(tracker, aliases=["tracker"])
    env = {"P2P_TRACKER": "tracker:6969"}
    plain = client.containers.run("p2p-peer:latest", detach=True, network=net.name, environment=env)
    wrapped = client.containers.run(
        "p2p-peer:latest", detach=True, network=net.name, environment=env,
        entrypoint=["p2p-allow-attached-networks", "p2p-peer"],
    )
    containers += [plain, wrapped]
    for peer in (plain, wrapped):
        wait_healthy(peer)
        assert peer.attrs["Config"]["User"] == "p2p"
    address = {p: p.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"] for p in (plain, wrapped)}
    assert gateway_status(client, net.name, address[plain]) == 403
    assert gateway_status(client, net.name, address[wrapped]) == 200
    subnet = net.attrs["IPAM"]["Config"][0]["Subnet"]
    environment = wrapped.exec_run(["sh", "-c", "tr '\\0' '\\n' </proc/1/environ"]).output.decode()
    assert f"P2P_HTTP_ALLOW={subnet}" in environment.splitlines()
    # Inside the container, loopback is always admitted.
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:7080/files').status)"
    assert plain.exec_run(["python3", "-c", code]).output.decode().strip() == "200"


def test_leecher_runs_as_the_owner_of_its_download_folder(images, tmp_path):
    """Files land owned by whoever owns the folder; a root-owned one is given to p2p first."""
    mine, docker_made = tmp_path / "mine", tmp_path / "made-by-docker"
    mine.mkdir()
    subprocess.run(["chown", "4321:4322", str(mine)], check=True)

    def identity(folder) -> str:
        result = subprocess.run(
            ["docker", "run", "--rm", "-v", f"{folder}:/downloads", "--entrypoint", "p2p-as-owner",
             "p2p-leecher:latest", "sh", "-c", "echo $(id -u) $(id -g)"],
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        return " ".join(result.stdout.split())

    assert identity(mine) == "4321 4322"
    uid, gid = identity(docker_made).split()
    assert uid == "10001"  # the image's p2p user
    assert (docker_made.stat().st_uid, docker_made.stat().st_gid) == (10001, int(gid))
