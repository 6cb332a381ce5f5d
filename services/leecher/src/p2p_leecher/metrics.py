from prometheus_client import CollectorRegistry, Counter, Gauge


class LeecherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.chunks = Counter("p2p_leecher_chunks_received_total", "Chunks received and verified", registry=registry)
        self.bytes = Counter("p2p_leecher_bytes_received_total", "Verified chunk bytes received", registry=registry)
        self.retries = Counter(
            "p2p_leecher_retries_total", "Chunks put back in the plan, by reason", ["reason"], registry=registry
        )
        self.hash_failures = Counter(
            "p2p_leecher_hash_failures_total", "Chunks whose SHA-256 did not match the manifest", registry=registry
        )
        self.peers_dropped = Counter(
            "p2p_leecher_peers_dropped_total", "Peers given up on for this download, by reason", ["reason"], registry=registry
        )
        self.peers_active = Gauge("p2p_leecher_peers_active", "Peers being downloaded from", registry=registry)
        self.duration = Gauge(
            "p2p_leecher_download_duration_seconds", "Wall time of the last download", registry=registry
        )
        self.downloads = Counter(
            "p2p_leecher_downloads_total", "Downloads finished, by result", ["result"], registry=registry
        )
