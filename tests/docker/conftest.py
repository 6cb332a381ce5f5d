"""Docker tests run real images and a real compose project. Under CI (true, 1 or yes) they
fail, never skip, when Docker cannot run; elsewhere they skip with the reason."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.ci import under_ci

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # its image cannot be pulled here

REPO = Path(__file__).resolve().parents[2]


def docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine answers ({lines[-1] if lines else 'docker info failed'})"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "docker compose v2 is missing (make compose-plugin installs it)"
    return None


@pytest.fixture(scope="session", autouse=True)
def docker_ready():
    problem = docker_problem()
    if problem:
        if under_ci():
            pytest.fail(f"Docker tests cannot run under CI: {problem}", pytrace=False)
        pytest.skip(f"Docker tests skipped: {problem}")


@pytest.fixture(scope="session")
def images(docker_ready) -> dict[str, str]:
    """Every image compose needs, built by the same script as `make images`; its .env settings."""
    result = subprocess.run(
        [str(REPO / "deploy" / "build-images.sh")], cwd=REPO, capture_output=True, text=True, timeout=3000
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {k: v or "" for k, v in dotenv_values(REPO / ".env").items()}


IMAGES_BUILD_TIMEOUT = 1800  # seconds: on a fresh machine the images build from nothing first


def pytest_collection_modifyitems(items):
    """The first test to need the images builds them in its set-up, which counts in its own
    timeout (300 s): that test gets time for a build from scratch (the Debian bases, every role)."""
    for item in items:
        if "images" in getattr(item, "fixturenames", ()):
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(IMAGES_BUILD_TIMEOUT))
            return
