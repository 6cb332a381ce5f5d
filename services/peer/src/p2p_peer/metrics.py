from prometheus_client import CollectorRegistry, Counter, Histogram

from p2p_shared.metrics import register_service_metrics
from p2p_shared.net.cache import CacheMetrics, HostCache
from p2p_shared.net.engine import EngineMetrics

ROUTES = ("file", "fetch", "list", "delete", "registry", "other")
BLOB_SOURCES = ("cache", "swarm", "upstream")


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

        # The registry mirror.
        self.registry_requests = Counter(
            "p2p_peer_registry_requests_total", "Registry (OCI) requests answered, by kind (base, manifest, blob, other) and status code",
            ["kind", "code"], registry=registry,
        )
        self.registry_blobs = Counter(
            "p2p_peer_registry_blobs_total",
            "Blob requests answered, by where the blob came from: cache (here already), swarm, upstream (fetched by this host)",
            ["source"], registry=registry,
        )
        self.registry_bytes = Counter(
            "p2p_peer_registry_blob_bytes_total",
            "Blob bytes by source: sent from the cache or the swarm, or received from the upstream",
            ["source"], registry=registry,
        )
        self.registry_elections = Counter(
            "p2p_peer_registry_elections_total",
            "Claims of a blob's upstream fetch: won (this host fetches it) or waited (another host does)",
            ["result"], registry=registry,
        )
        self.registry_mismatches = Counter(
            "p2p_peer_registry_digest_mismatches_total",
            "Manifests or blobs whose bytes did not hash to their digest, by source (upstream, swarm): refused",
            ["source"], registry=registry,
        )
        for source in BLOB_SOURCES:
            self.registry_blobs.labels(source)
            self.registry_bytes.labels(source)
        for result in ("won", "waited"):
            self.registry_elections.labels(result)
        for source in ("upstream", "swarm"):
            self.registry_mismatches.labels(source)

    def watch(self, cache: HostCache) -> None:
        self.cache = cache.metrics = CacheMetrics(self.registry, "peer", cache)
