from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from p2p_shared.metrics import register_service_metrics


class SeederMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        register_service_metrics(registry, "p2p-seeder")
        self.chunks_served = Counter("p2p_seeder_chunks_served_total", "Chunks sent to peers", registry=registry)
        self.bytes_served = Counter("p2p_seeder_bytes_served_total", "Chunk payload bytes sent", registry=registry)
        self.serve_seconds = Histogram(
            "p2p_seeder_chunk_serve_seconds",
            "Time from a chunk request to its last byte handed to the kernel",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.refused = Counter(
            "p2p_seeder_requests_refused_total", "Requests answered with an error, by code", ["code"], registry=registry
        )
        self.connections = Counter("p2p_seeder_connections_total", "Peer connections accepted", registry=registry)
        self.connections_active = Gauge("p2p_seeder_connections_active", "Open peer connections", registry=registry)
        self.heartbeats = Counter(
            "p2p_seeder_heartbeats_total", "Heartbeats sent to the tracker, by result", ["result"], registry=registry
        )
        self.registrations = Counter(
            "p2p_seeder_registrations_total", "Registrations sent to the tracker, by result", ["result"], registry=registry
        )
        self.files = Gauge("p2p_seeder_files", "Files this seeder serves", registry=registry)
        self.hash_seconds = Gauge(
            "p2p_seeder_startup_hash_seconds", "Time spent hashing files at start (0 when cached)", registry=registry
        )
        for result in ("ok", "unknown", "timeout"):
            self.heartbeats.labels(result)
        for result in ("ok", "refused"):
            self.registrations.labels(result)
        for code in ("unknown_file", "bad_index", "bad_request", "unsupported_version", "unavailable", "too_many_connections", "unauthorized"):
            self.refused.labels(code)
