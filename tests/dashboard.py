"""The Grafana dashboard's queries as Grafana sends them to Prometheus: template variables
substituted the way Grafana does with its defaults (every instance selected). Grafana cannot
be installed here, so the unit tests parse these queries with promtool and the integration and
Docker tests run them against a real Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "p2p-swarm.json"

# $name, ${name}, ${name:format} and the old [[name]]
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panel_queries(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def variable_values(dashboard: dict, scrape_interval: float) -> dict[str, str]:
    # Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval); over
    # a short time range the second term wins.
    values = {"__rate_interval": f"{4 * scrape_interval:g}s", "__interval": f"{scrape_interval:g}s"}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":
            values[variable["name"]] = variable["current"]["value"]
        elif variable["type"] == "query":
            values[variable["name"]] = variable.get("allValue") or ".*"  # "All": a regex matching all
    return values


def as_grafana_sends(expr: str, dashboard: dict, scrape_interval: float = 5.0) -> str:
    values = variable_values(dashboard, scrape_interval)

    def value(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise ValueError(f"the dashboard defines no variable {name!r} (in {expr!r})")
        return values[name]

    return VARIABLE.sub(value, expr)


def queries_as_grafana_sends(dashboard: dict | None = None, scrape_interval: float = 5.0) -> list[str]:
    dashboard = dashboard or load_dashboard()
    return [as_grafana_sends(expr, dashboard, scrape_interval) for expr in panel_queries(dashboard)]
