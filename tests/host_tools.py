"""Programs the tests run for real (promtool, the Pushgateway) that come from Debian packages.
Missing, a test fails under CI (CI=true/1/yes) and skips with the reason elsewhere."""

from __future__ import annotations

import os
import shutil

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def host_tool(program: str, debian_package: str) -> str:
    path = shutil.which(program)
    if path is None:
        reason = f"{program} is missing: apt-get install {debian_package}"
        if under_ci():
            pytest.fail(f"{reason} (required under CI)", pytrace=False)
        pytest.skip(reason)
    return path
