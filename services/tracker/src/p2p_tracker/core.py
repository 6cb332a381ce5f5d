"""The tracker's request handling without I/O: datagram and source address in, answer out.

Each request is answered in the protocol version it was asked in (messages.TRACKER_VERSIONS):
a version 1 client never hears of partial holders."""

from __future__ import annotations

import random

import structlog

from p2p_shared import TRACKER_VERSION, messages
from p2p_shared.auth import AuthError, ConnectionIds, Sealer
from p2p_shared.errors import LocalProtocolError, RemoteProtocolError
from p2p_shared.limits import MAX_FILES_PER_ANSWER
from p2p_shared.ratelimit import AddressLimiter
from p2p_shared.registry import HolderRegistry, RegistryFull

from .metrics import TrackerMetrics

log = structlog.get_logger()


class TrackerCore:
    def __init__(
        self,
        registry: HolderRegistry,
        metrics: TrackerMetrics,
        interval: float,
        max_peers: int,
        rng: random.Random | None = None,
        limiter: AddressLimiter | None = None,
        ids: ConnectionIds | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.interval = interval
        self.max_peers = max_peers
        self.rng = rng or random.Random()
        self.limiter = limiter
        self.ids = ids or ConnectionIds()
        self.sealer = sealer  # the swarm secret, when one is set

    def handle(self, data: bytes, source: tuple[str, int], now: float) -> bytes | None:
        """Answer one datagram, or None to drop it. Never raises for bad input."""
        if self.limiter is not None and not self.limiter.allow(source[0], now):
            self.metrics.refused.labels("rate_limited").inc()
            return None
        if self.sealer is not None:
            try:
                data = self.sealer.open(data, now)
            except AuthError as exc:
                self.metrics.refused.labels("unauthenticated").inc()
                log.debug("datagram refused", source=source[0], reason=exc.reason)
                return None
        try:
            message = messages.decode(data)
        except RemoteProtocolError as exc:
            reason = "too_large" if "exceeds" in str(exc) else "invalid"
            self.metrics.malformed.labels(reason).inc()
            log.debug("datagram dropped", source=source[0], reason=str(exc))
            return None
        self.metrics.datagrams.labels(message.type).inc()
        version = message.v  # the answer's
        if version not in messages.TRACKER_VERSIONS:
            version = TRACKER_VERSION
            self.metrics.malformed.labels("unsupported_version").inc()
            versions = " and ".join(map(str, messages.TRACKER_VERSIONS))
            reply: messages.Reply = messages.ErrorReply(
                code="unsupported_version", message=f"this tracker speaks versions {versions}"
            )
        elif isinstance(message, messages.Connect):
            reply = messages.Connected(conn=self.ids.issue(source[0], now))
        elif isinstance(message, messages.ProvenRequest) and not self.ids.valid(message.conn, source[0], now):
            # Unproven sender: a short answer only, so a spoofed source gets nothing bigger than it sent.
            self.metrics.refused.labels("unconnected").inc()
            reply = messages.ErrorReply(code="connect_first")
        else:
            answer = self._dispatch(message, source, now)
            if answer is None:
                return None
            reply = answer
        reply = reply.model_copy(update={"txn": message.txn, "v": version})
        while True:
            try:
                data = messages.encode(reply)
                return data if self.sealer is None else self.sealer.seal(data, now)
            except LocalProtocolError:
                # Only long advertised host names make peer lists this large: send fewer peers.
                if not isinstance(reply, messages.Peers) or not (reply.peers or reply.partial):
                    raise
                reply = _halve_longer_list(reply)

    def _dispatch(self, message: messages.Message, source: tuple[str, int], now: float) -> messages.Reply | None:
        match message:
            case messages.Register(port=port, host=host, files=files, partial=partial):
                key = (host or source[0], port)
                try:
                    result = self.registry.register(key, files, now, partial=partial)
                except RegistryFull as exc:
                    self.metrics.registrations.labels("rejected").inc()
                    return messages.ErrorReply(code="full", message=str(exc))
                self.metrics.registrations.labels(result).inc()
                if result == "new":
                    log.info("holder registered", holder=f"{key[0]}:{key[1]}", files=len(files), partial=partial)
                return messages.Ack(interval=self.interval)
            case messages.Heartbeat(port=port, host=host):
                key = (host or source[0], port)
                if not self.registry.heartbeat(key, now):
                    self.metrics.heartbeats.labels("unknown").inc()
                    return messages.ErrorReply(code="unknown_seeder", message="register again")
                self.metrics.heartbeats.labels("ok").inc()
                return messages.Ack(interval=self.interval)
            case messages.Unregister(port=port, host=host):
                key = (host or source[0], port)
                if self.registry.unregister(key):
                    self.metrics.unregistrations.inc()
                    log.info("holder unregistered", holder=f"{key[0]}:{key[1]}")
                return messages.Ack(interval=self.interval)
            case messages.Lookup(v=v, name=name, file_id=file_id, port=port, host=host):
                entry = self.registry.resolve(name=name, file_id=file_id)
                asker = None if port is None else (host or source[0], port)
                complete, partial = ([], []) if entry is None else self.registry.holders(
                    entry.file_id, self.max_peers, self.rng, exclude=asker
                )
                if entry is None or (v == 1 and not complete):  # version 1: no seeder, no file
                    self.metrics.lookups.labels("not_found").inc()
                    return messages.Peers(partial=None if v == 1 else [])
                self.metrics.lookups.labels("found").inc()
                # Hot path: everything in the answer was validated when it was registered.
                return messages.Peers.model_construct(
                    file=entry, peers=complete, partial=None if v == 1 else partial, v=v, txn=0, type="peers"
                )
            case messages.ListFiles(v=v):
                files = self.registry.files()
                return messages.Files(
                    v=v,
                    files=[
                        messages.FileSummary(**entry.model_dump(), seeders=complete, partial=None if v == 1 else partial)
                        for entry, complete, partial in files[:MAX_FILES_PER_ANSWER]
                    ],
                    total=len(files),
                )
        # An answer type sent to the tracker: drop it rather than reflect anything.
        self.metrics.malformed.labels("unexpected").inc()
        return None

    def expire(self, now: float) -> None:
        for host, port in self.registry.expire(now):
            self.metrics.expirations.inc()
            log.info("holder expired", holder=f"{host}:{port}")


def _halve_longer_list(reply: messages.Peers) -> messages.Peers:
    """The answer with half of its longer peer list (the partial one on a tie)."""
    partial = reply.partial or []
    if len(partial) >= len(reply.peers):
        return reply.model_copy(update={"partial": partial[: len(partial) // 2]})
    return reply.model_copy(update={"peers": reply.peers[: len(reply.peers) // 2]})
