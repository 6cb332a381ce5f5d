from prometheus_client import CollectorRegistry, Gauge

from p2p_shared.metrics import register_service_metrics
from p2p_shared.net.engine import EngineMetrics


class SeederMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        register_service_metrics(registry, "p2p-seeder")
        self.engine = EngineMetrics(registry, "seeder", downloads=False)
        self.files = Gauge("p2p_seeder_files", "Files this seeder serves", registry=registry)
        self.hash_seconds = Gauge(
            "p2p_seeder_startup_hash_seconds", "Time spent hashing files at start (0 when cached)", registry=registry
        )
