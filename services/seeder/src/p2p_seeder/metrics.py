from prometheus_client import CollectorRegistry, Gauge

from p2p_shared.metrics import register_service_metrics
from p2p_shared.net.holder_link import LinkMetrics
from p2p_shared.net.peer_server import ServingMetrics


class SeederMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        register_service_metrics(registry, "p2p-seeder")
        self.serving = ServingMetrics(registry, "seeder")
        self.link = LinkMetrics(registry, "seeder")
        self.files = Gauge("p2p_seeder_files", "Files this seeder serves", registry=registry)
        self.hash_seconds = Gauge(
            "p2p_seeder_startup_hash_seconds", "Time spent hashing files at start (0 when cached)", registry=registry
        )
