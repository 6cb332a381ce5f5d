from prometheus_client import CollectorRegistry, Counter, Histogram

from p2p_shared.metrics import register_service_metrics
from p2p_shared.net.cache import CacheMetrics, HostCache
from p2p_shared.net.engine import EngineMetrics

ROUTES = ("file", "fetch", "list", "delete", "other")


class PeerMetrics:
    """The engine's metrics as `p2p_peer_...`, the cache's, and the HTTP gateway's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        register_service_metrics(registry, "p2p-peer")
        self.registry = registry
        self.engine = EngineMetrics(registry, "peer")
        self.cache: CacheMetrics | None = None
        self.http_requests = Counter(
            "p2p_peer_http_requests_total", "HTTP requests answered, by route and status code", ["route", "code"],
            registry=registry,
        )
        self.http_bytes = Counter("p2p_peer_http_sent_bytes_total", "File bytes sent over HTTP", registry=registry)
        self.first_byte = Histogram(
            "p2p_peer_http_first_byte_seconds",
            "From a file request to its first byte of body (a cached file: at once; an uncached one: its first chunk verified)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.http_aborted = Counter(
            "p2p_peer_http_aborted_total", "File responses cut short because the download failed", registry=registry
        )

    def watch(self, cache: HostCache) -> None:
        self.cache = cache.metrics = CacheMetrics(self.registry, "peer", cache)
