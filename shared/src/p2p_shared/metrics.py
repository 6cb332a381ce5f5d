"""What every service's registry exposes besides its own metrics: the process (CPU, memory, open
files, start time) and which build runs (`p2p_build_info{version}`, always 1, the usual way to
put a version on a dashboard or join it to other series)."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

from .settings import package_version


def register_service_metrics(registry: CollectorRegistry, distribution: str) -> None:
    # `_created` series double every counter's cardinality and no dashboard or rule here reads
    # them. The switch is process-wide in prometheus_client, so it is thrown when a service
    # builds its registry, not when this module is imported.
    prometheus_client.disable_created_metrics()
    ProcessCollector(registry=registry)
    build = Gauge("p2p_build_info", "The running build: 1, labelled with its version", ["version"], registry=registry)
    build.labels(package_version(distribution)).set(1)
