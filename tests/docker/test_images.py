"""Each image builds (air-gapped where no registry answers), runs as non-root, turns healthy."""

import subprocess
import time

import docker
import pytest
from testcontainers.core.container import DockerContainer


def wait_healthy(container: DockerContainer, timeout: float = 120) -> None:
    wrapped = container.get_wrapped_container()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wrapped.reload()
        state = wrapped.attrs["State"]
        if state["Health"]["Status"] == "healthy":
            return
        assert state["Status"] == "running", wrapped.logs().decode()
        time.sleep(0.5)
    raise AssertionError(f"not healthy within {timeout}s:\n{wrapped.logs().decode()}")


def test_images_build_offline_when_no_registry_answers(images):
    client = docker.from_env()
    official_pullable = images["BASE_IMAGE"].startswith("python:")
    if not official_pullable:  # the air-gapped path: a Debian base made here, wheels from the host
        assert images["OFFLINE"] == "1"
        out = client.containers.run(images["BASE_IMAGE"], ["cat", "/etc/debian_version"], remove=True)
        assert out.decode().startswith("12.")
    for role in ("tracker", "seeder", "leecher"):
        config = client.images.get(f"p2p-{role}:latest").attrs["Config"]
        assert config["User"] == "p2p"
        assert config["Entrypoint"] == [f"p2p-{role}"]
    for image in (images["PROMETHEUS_IMAGE"], images["PUSHGATEWAY_IMAGE"]):
        client.images.get(image)


def test_tracker_turns_healthy(images):
    with DockerContainer("p2p-tracker:latest") as tracker:
        wait_healthy(tracker)


def test_seeder_turns_healthy_once_its_files_are_hashed(images):
    # No tracker here: the seeder still serves (and keeps trying to register).
    with DockerContainer("p2p-seeder:latest").with_command(["-f", "/etc/os-release"]) as seeder:
        wait_healthy(seeder)


def test_leecher_image_runs_its_command(images):
    result = subprocess.run(["docker", "run", "--rm", "p2p-leecher:latest", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "p2p-leecher" in result.stdout


@pytest.mark.parametrize("role", ["tracker", "seeder"])
def test_healthcheck_fails_when_nothing_answers(images, role):
    result = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "p2p-health", f"p2p-{role}:latest", role],
        capture_output=True, text=True,
    )
    assert result.returncode == 1 and "not healthy" in result.stderr
