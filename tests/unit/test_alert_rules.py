"""The alerting rules shipped in deploy/prometheus/ load in Prometheus and behave as their unit
tests say (promtool, the real tool). Each rule is tested both firing and not firing."""

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.host_tools import host_tool

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "p2p.rules.yml"
RULE_TESTS = PROMETHEUS / "rules" / "p2p.rules.test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    return host_tool("promtool", "prometheus")


def run(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_names() -> list[str]:
    return [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_config_loads_the_rules(promtool):
    result = run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_rules_pass_their_unit_tests(promtool):
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_is_tested_firing_and_not_firing():
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert len(alert_names()) >= 8
    assert set(alert_names()) <= firing & quiet


def test_the_unit_tests_catch_a_broken_rule(promtool, tmp_path):
    # A rule that can no longer fire must turn the same tests red.
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("p2p_tracker_files_without_seeders > 0",
                                                                 "p2p_tracker_files_without_seeders > 5"))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0 and "P2PFileWithoutSeeders" in result.stdout + result.stderr
