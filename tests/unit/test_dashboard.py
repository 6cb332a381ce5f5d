"""The Grafana dashboard: data source and instance as variables, windows from $__rate_interval,
every query valid PromQL once substituted (checked offline by promtool as recording rules)."""

import itertools
import re
import subprocess

import pytest
import yaml

from tests.dashboard import as_grafana_sends, load_dashboard, panel_queries, queries_as_grafana_sends
from tests.host_tools import host_tool

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard()


def test_data_source_is_a_variable_defaulting_to_the_provisioned_one(dashboard):
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == "p2p-prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]


def test_instance_variable_selects_from_every_service_and_filters_seeder_and_leecher_panels(dashboard):
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
    assert variable["query"]["query"] == "label_values(p2p_build_info, instance)"
    assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
    per_instance = [e for e in panel_queries(dashboard) if re.search(r"p2p_(seeder|leecher)_|process_", e)]
    assert len(per_instance) >= 10
    assert [e for e in per_instance if 'instance=~"$instance"' not in e] == []


def test_no_fixed_rate_windows(dashboard):
    windows = [w for e in panel_queries(dashboard) for w in re.findall(r"\[[^\]]*\]", e)]
    assert windows and set(windows) == {"[$__rate_interval]"}


def test_panels_for_refused_traffic_lost_files_versions_and_processes(dashboard):
    queries = " ".join(panel_queries(dashboard))
    for metric in ("p2p_tracker_refused_datagrams_total", "p2p_tracker_malformed_datagrams_total",
                   "p2p_seeder_requests_refused_total", "p2p_tracker_files_without_seeders", "p2p_build_info",
                   "process_cpu_seconds_total"):
        assert metric in queries


def test_panels_do_not_overlap(dashboard):
    cells = [{(x, y) for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
              for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])} for p in dashboard["panels"]]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(cells, 2))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"])


def test_substitution_is_grafanas(dashboard):
    expr = 'rate(x{instance=~"$instance", a="${instance:regex}"}[$__rate_interval]) or [[instance]]'
    assert as_grafana_sends(expr, dashboard, scrape_interval=5) == 'rate(x{instance=~".*", a=".*"}[20s]) or .*'
    with pytest.raises(ValueError, match="no variable 'seeder'"):
        as_grafana_sends("up{instance=~'$seeder'}", dashboard)


def test_every_query_parses_as_promql(tmp_path):
    promtool = host_tool("promtool", "prometheus")
    queries = queries_as_grafana_sends()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(queries)]}]}
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", "dashboard.rules.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_promtool_would_catch_a_broken_query(tmp_path):
    promtool = host_tool("promtool", "prometheus")
    rules = {"groups": [{"name": "d", "rules": [{"record": "d:q", "expr": "sum by (le (rate(x[20s]))"}]}]}
    (tmp_path / "bad.rules.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", "bad.rules.yml"], cwd=tmp_path, capture_output=True)
    assert result.returncode != 0


def test_live_holders_panel_shows_each_kind(dashboard):
    # Every tracker replica reports the one registry they share: shown once, not summed.
    [panel] = [p for p in dashboard["panels"] if p["title"] == "Live holders"]
    assert [(t["expr"], t["legendFormat"]) for t in panel["targets"]] == [("max by (kind) (p2p_tracker_live_holders)", "{{kind}}")]


def test_tracker_replicas_have_panels_of_their_own(dashboard):
    per_replica = [e for e in panel_queries(dashboard) if "by (instance" in e and "p2p_tracker_" in e]
    assert any("p2p_tracker_datagrams_total" in e for e in per_replica)
    assert any("p2p_tracker_store_errors_total" in e for e in per_replica)


def test_every_tracker_metric_the_dashboard_and_alerts_read_is_exposed(dashboard):
    from pathlib import Path

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from p2p_tracker.metrics import TrackerMetrics
    from p2p_tracker.store import Limits, MemoryStore

    registry = CollectorRegistry()
    TrackerMetrics(registry, MemoryStore(Limits(ttl=1)))
    exposed = {s.name for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    rules = (Path(__file__).resolve().parents[2] / "deploy/prometheus/rules/p2p.rules.yml").read_text()
    read = set(re.findall(r"p2p_tracker_\w+", " ".join(panel_queries(dashboard)) + rules))
    assert "p2p_tracker_live_holders" in read and read - exposed == set()
