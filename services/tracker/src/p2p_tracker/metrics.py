from prometheus_client import CollectorRegistry, Counter, Gauge

from p2p_shared.metrics import register_service_metrics

from .store import RegistryStore


REFUSALS = (
    "rate_limited", "unconnected", "unauthenticated", "nonces_full", "unpadded", "foreign_host", "not_registrant",
    "holders", "holders_per_address", "files", "files_per_address", "files_per_holder", "busy",
)


class TrackerMetrics:
    def __init__(self, registry: CollectorRegistry, store: RegistryStore) -> None:
        register_service_metrics(registry, "p2p-tracker")
        self.datagrams = Counter(
            "p2p_tracker_datagrams_total", "Datagrams received, by message type", ["type"], registry=registry
        )
        self.malformed = Counter(
            "p2p_tracker_malformed_datagrams_total",
            "Datagrams dropped or refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.registrations = Counter(
            "p2p_tracker_registrations_total", "Holder registrations, by result", ["result"], registry=registry
        )
        self.heartbeats = Counter(
            "p2p_tracker_heartbeats_total", "Holder heartbeats received, by result", ["result"], registry=registry
        )
        self.unregistrations = Counter(
            "p2p_tracker_unregistrations_total", "Holders that unregistered on shutdown", registry=registry
        )
        self.drops = Counter(
            "p2p_tracker_drops_total",
            "Files holders dropped while staying registered (file ids named in drops of known holders)",
            registry=registry,
        )
        self.claims = Counter(
            "p2p_tracker_lease_claims_total",
            "Lease claims (version 5), by result: granted (new, renewed or taken over), held (by another), released",
            ["result"],
            registry=registry,
        )
        self.expirations = Counter(
            "p2p_tracker_expirations_total", "Holders forgotten after missed heartbeats", registry=registry
        )
        self.refused = Counter(
            "p2p_tracker_refused_datagrams_total",
            "Well-formed datagrams refused: rate_limited, unconnected (no valid connection id), "
            "unauthenticated (swarm secret), nonces_full (replay memory full), unpadded (a connect shorter "
            "than its answer), foreign_host (another address than the sender's), not_registrant (a holder "
            "another sender registered), the registry's caps: holders, holders_per_address, files, "
            "files_per_address, files_per_holder, leases, and busy (too many requests waiting for the registry store)",
            ["reason"],
            registry=registry,
        )
        self.lookups = Counter("p2p_tracker_lookups_total", "File lookups, by result", ["result"], registry=registry)
        self.store_errors = Counter(
            "p2p_tracker_store_errors_total",
            "Registry store calls that failed: timeout (no answer within --registry-timeout), connection "
            "(unreachable); each request is answered `unavailable`",
            ["reason"],
            registry=registry,
        )
        self.store_up = Gauge(
            "p2p_tracker_store_up",
            "1 while the registry store answers (set by each sweep), 0 after a call it failed",
            registry=registry,
        )
        self.store_up.set(1)
        for reason in ("timeout", "connection"):
            self.store_errors.labels(reason)
        for kind in ("connect", "register", "heartbeat", "unregister", "drop", "lookup", "list_files"):
            self.datagrams.labels(kind)
        for reason in ("invalid", "too_large", "unexpected", "unsupported_version"):
            self.malformed.labels(reason)
        for reason in REFUSALS:
            self.refused.labels(reason)
        for result in ("new", "refreshed", "rejected"):
            self.registrations.labels(result)
        for result in ("ok", "unknown"):
            self.heartbeats.labels(result)
        for result in ("found", "not_found"):
            self.lookups.labels(result)
        live = Gauge(
            "p2p_tracker_live_holders",
            "Holders currently registered, by kind: complete (seeders, finished leechers) or partial "
            "(leechers downloading); a holder complete for one file and partial for another counts once in each",
            ["kind"],
            registry=registry,
        )
        for kind in ("complete", "partial"):
            live.labels(kind).set_function(lambda kind=kind: getattr(store.stats, kind))
        files = Gauge("p2p_tracker_files", "Distinct files held by live holders, complete or partial", registry=registry)
        files.set_function(lambda: store.stats.files)
        lost = Gauge(
            "p2p_tracker_files_without_seeders",
            "Files whose last complete holder went silent (expired) in the last 24 h and none registered "
            "them complete since",
            registry=registry,
        )
        lost.set_function(lambda: store.stats.lost_files)
