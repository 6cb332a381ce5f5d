"""The monitoring files parse, and the dashboard refers to the Prometheus data source through its
variable (tests/unit/test_dashboard.py checks the rest of the dashboard)."""

import json
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_datasource_has_a_fixed_uid():
    doc = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [source] = doc["datasources"]
    assert source["uid"] == "p2p-prometheus" and source["url"] == "http://prometheus:9090"


def test_dashboard_provider_points_at_the_dashboards_folder():
    doc = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/p2p.yml").read_text())
    assert doc["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_panel_and_query_uses_the_datasource_variable():
    dashboard = json.loads((DEPLOY / "grafana/dashboards/p2p-swarm.json").read_text())
    panels = dashboard["panels"]
    assert {p["datasource"]["uid"] for p in panels} == {"${datasource}"}
    assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} == {"${datasource}"}
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("live holders", "heartbeats", "bytes served", "chunks served", "share", "retries", "latency",
                  "last download"):
        assert topic in titles


def test_prometheus_finds_seeders_through_dns():
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["seeder"]["dns_sd_configs"][0]["names"] == ["seeder"]
    assert jobs["tracker"]["dns_sd_configs"][0]["names"] == ["tracker"]  # every replica
    assert jobs["pushgateway"]["honor_labels"] is True
