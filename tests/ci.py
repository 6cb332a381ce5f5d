"""How the tests read the CI variable: a boolean, as CI systems set it (true, 1, yes)."""

import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def cannot_run(reason: str) -> None:
    """A test that lacks what it needs fails under CI (something is missing there) and skips,
    with the reason, elsewhere."""
    if under_ci():
        pytest.fail(f"cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)
