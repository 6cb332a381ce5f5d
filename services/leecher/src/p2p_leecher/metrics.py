from prometheus_client import CollectorRegistry, Counter, Gauge

from p2p_shared.metrics import register_service_metrics
from p2p_shared.net.holder_link import LinkMetrics
from p2p_shared.net.peer_server import ServingMetrics

RETRY_REASONS = ("hash_mismatch", "timeout", "connection", "peer_error", "protocol", "bad_peer")


class LeecherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        register_service_metrics(registry, "p2p-leecher")
        self.chunks = Counter("p2p_leecher_chunks_received_total", "Chunks received and verified", registry=registry)
        self.bytes = Counter(
            "p2p_leecher_bytes_received_total",
            "Verified chunk bytes received, by source: a complete holder (seeder) or another leecher (peer)",
            ["source"],
            registry=registry,
        )
        self.serving = ServingMetrics(registry, "leecher")
        self.link = LinkMetrics(registry, "leecher")
        self.retries = Counter(
            "p2p_leecher_retries_total", "Chunks put back in the plan, by reason", ["reason"], registry=registry
        )
        self.hash_failures = Counter(
            "p2p_leecher_hash_failures_total", "Chunks whose SHA-256 did not match the manifest", registry=registry
        )
        self.bad_manifests = Counter(
            "p2p_leecher_bad_manifests_total",
            "Manifests refused: not hashing to the file id, or with absurd values",
            registry=registry,
        )
        self.peers_dropped = Counter(
            "p2p_leecher_peers_dropped_total", "Peers given up on for this download, by reason", ["reason"], registry=registry
        )
        self.peers_active = Gauge("p2p_leecher_peers_active", "Peers being downloaded from", registry=registry)
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
        # Known label values start at 0, so dashboards and alerts see the series before the first event.
        for source in ("seeder", "peer"):
            self.bytes.labels(source)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        self.peers_dropped.labels("bad_data")
        for result in ("ok", "failed"):
            self.downloads.labels(result)
