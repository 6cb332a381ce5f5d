"""A missing host program fails a test under CI (CI=true/1/yes) and skips it elsewhere."""

import pytest

from tests.host_tools import host_tool

ABSENT = "p2p-no-such-program"


@pytest.mark.parametrize("ci", ["true", "1", "yes", "TRUE"])
def test_missing_program_fails_under_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=f"{ABSENT} is missing: apt-get install some-package"):
        host_tool(ABSENT, "some-package")


@pytest.mark.parametrize("ci", [None, "", "false", "0", "no"])
def test_missing_program_skips_elsewhere(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} is missing: apt-get install some-package"):
        host_tool(ABSENT, "some-package")


def test_present_program_is_found(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert host_tool("sh", "dash").endswith("/sh")
