"""Every service's registry carries process metrics and its build version, and no `_created`
series (each test turns `_created` back on first, so the factory itself must turn it off)."""

from importlib.metadata import version

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from p2p_leecher.metrics import LeecherMetrics
from p2p_seeder.metrics import SeederMetrics
from p2p_shared.messages import FileEntry
from p2p_tracker.metrics import TrackerMetrics
from p2p_tracker.store import Limits, MemoryStore

FACTORIES = {
    "p2p-tracker": lambda registry: TrackerMetrics(registry, MemoryStore(Limits(ttl=90))),
    "p2p-seeder": SeederMetrics,
    "p2p-leecher": LeecherMetrics,
}


@pytest.fixture(params=sorted(FACTORIES))
def exposition(request) -> tuple[str, str]:
    prometheus_client.enable_created_metrics()
    registry = CollectorRegistry()
    FACTORIES[request.param](registry)
    return request.param, generate_latest(registry).decode()


def test_process_metrics_are_exposed(exposition):
    _, text = exposition
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds",
            "process_open_fds"} <= names


def test_build_info_carries_the_installed_version(exposition):
    distribution, text = exposition
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "p2p_build_info"]
    [sample] = family.samples
    assert sample.labels == {"version": version(distribution)} and sample.value == 1


def test_no_created_series(exposition):
    _, text = exposition
    assert "_total" in text  # the counters are there ...
    assert [line for line in text.splitlines() if "_created" in line] == []  # ... without their _created twins


async def test_tracker_exposes_files_without_seeders(make_store):
    registry, holders = CollectorRegistry(), await make_store(ttl=10)
    TrackerMetrics(registry, holders)
    await holders.register(("a", 1), [FileEntry(file_id="1" * 64, name="f", size=1, chunk_size=1)], now=0)
    await holders.refresh_stats()  # what a sweep does
    assert registry.get_sample_value("p2p_tracker_files_without_seeders") == 0
    await holders.expire(now=11)
    await holders.refresh_stats()
    assert registry.get_sample_value("p2p_tracker_files_without_seeders") == 1
