"""Under CI (true, 1 or yes, any case) the Docker tests fail, never skip, when Docker cannot run;
elsewhere they skip."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_docker_tests(ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # an engine that is not there
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/docker/test_images.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("ci", ["true", "1", "TRUE", "yes"])
def test_docker_tests_fail_under_ci_without_docker(ci):
    result = run_docker_tests(ci)
    assert result.returncode != 0
    assert "Docker tests cannot run under CI" in result.stdout
    assert " passed" not in result.stdout and "skipped" not in result.stdout


@pytest.mark.parametrize("ci", [None, "false", "0"])
def test_docker_tests_skip_with_a_reason_elsewhere(ci):
    result = run_docker_tests(ci)
    assert result.returncode == 0
    assert "skipped" in result.stdout and " failed" not in result.stdout
