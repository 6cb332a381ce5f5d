"""The tracker's request handling without I/O: datagram and source address in, answer out."""

from __future__ import annotations

import random

import structlog

from p2p_shared import PROTOCOL_VERSION, messages
from p2p_shared.auth import AuthError, ConnectionIds, Sealer
from p2p_shared.errors import LocalProtocolError, RemoteProtocolError
from p2p_shared.limits import MAX_FILES_PER_ANSWER
from p2p_shared.ratelimit import AddressLimiter
from p2p_shared.registry import RegistryFull, SeederRegistry

from .metrics import TrackerMetrics

log = structlog.get_logger()


class TrackerCore:
    def __init__(
        self,
        registry: SeederRegistry,
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
        if message.v != PROTOCOL_VERSION:
            self.metrics.malformed.labels("unsupported_version").inc()
            reply: messages.Reply = messages.ErrorReply(
                code="unsupported_version", message=f"this tracker speaks version {PROTOCOL_VERSION}"
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
        reply = reply.model_copy(update={"txn": message.txn})
        while True:
            try:
                data = messages.encode(reply)
                return data if self.sealer is None else self.sealer.seal(data, now)
            except LocalProtocolError:
                # Only long advertised host names make a peer list this large: send fewer peers.
                if not isinstance(reply, messages.Peers) or not reply.peers:
                    raise
                reply = reply.model_copy(update={"peers": reply.peers[: len(reply.peers) // 2]})

    def _dispatch(self, message: messages.Message, source: tuple[str, int], now: float) -> messages.Reply | None:
        match message:
            case messages.Register(port=port, host=host, files=files):
                key = (host or source[0], port)
                try:
                    result = self.registry.register(key, files, now)
                except RegistryFull as exc:
                    self.metrics.registrations.labels("rejected").inc()
                    return messages.ErrorReply(code="full", message=str(exc))
                self.metrics.registrations.labels(result).inc()
                if result == "new":
                    log.info("seeder registered", seeder=f"{key[0]}:{key[1]}", files=len(files))
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
                    log.info("seeder unregistered", seeder=f"{key[0]}:{key[1]}")
                return messages.Ack(interval=self.interval)
            case messages.Lookup(name=name, file_id=file_id):
                entry = self.registry.resolve(name=name, file_id=file_id)
                if entry is None:
                    self.metrics.lookups.labels("not_found").inc()
                    return messages.Peers()
                self.metrics.lookups.labels("found").inc()
                holders = self.registry.holders(entry.file_id, self.max_peers, self.rng)
                # Hot path: everything in the answer was validated when it was registered.
                return messages.Peers.model_construct(file=entry, peers=holders, v=PROTOCOL_VERSION, txn=0, type="peers")
            case messages.ListFiles():
                files = self.registry.files()
                return messages.Files(
                    files=[
                        messages.FileSummary(**entry.model_dump(), seeders=count)
                        for entry, count in files[:MAX_FILES_PER_ANSWER]
                    ],
                    total=len(files),
                )
        # An answer type sent to the tracker: drop it rather than reflect anything.
        self.metrics.malformed.labels("unexpected").inc()
        return None

    def expire(self, now: float) -> None:
        for host, port in self.registry.expire(now):
            self.metrics.expirations.inc()
            log.info("seeder expired", seeder=f"{host}:{port}")
