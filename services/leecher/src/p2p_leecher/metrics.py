from prometheus_client import CollectorRegistry, Counter, Gauge

from p2p_shared.metrics import register_service_metrics
from p2p_shared.net.engine import EngineMetrics


class LeecherMetrics:
    """The engine's metrics as `p2p_leecher_...`, and the run's own: a leecher is a batch job."""

    def __init__(self, registry: CollectorRegistry) -> None:
        register_service_metrics(registry, "p2p-leecher")
        self.engine = EngineMetrics(registry, "leecher")
        self.duration = Gauge(
            "p2p_leecher_download_duration_seconds", "Wall time of the last download", registry=registry
        )
        self.size = Gauge("p2p_leecher_download_size_bytes", "Size of the last downloaded file", registry=registry)
        self.last_success = Gauge(
            "p2p_leecher_last_success_timestamp_seconds", "When the last download succeeded (Unix time)", registry=registry
        )
        self.downloads = Counter(
            "p2p_leecher_downloads_total", "Downloads finished, by result", ["result"], registry=registry
        )
        for result in ("ok", "failed"):
            self.downloads.labels(result)
