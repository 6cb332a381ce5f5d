"""The tracker's request handling without I/O: datagram and source address in, answer out.

Each request is answered in the protocol version it was asked in (messages.TRACKER_VERSIONS):
a version 1 client never hears of partial holders, versions 1 and 2 never of `forbidden`.

What the tracker believes: a sender that has not proven it receives at its source address
(no valid connection id yet) gets no answer larger than what it sent. A proven sender speaks for
its own address only: a holder at another host needs the swarm secret, which makes every sender
a member. A holder belongs to the address that registered it, any port of it (registry.NotRegistrant)."""

from __future__ import annotations

import ipaddress
import random

import structlog

from p2p_shared import TRACKER_VERSION, messages
from p2p_shared.auth import AuthError, ConnectionIds, Sealer
from p2p_shared.errors import LocalProtocolError, RemoteProtocolError
from p2p_shared.limits import MAX_FILES_PER_ANSWER
from p2p_shared.ratelimit import AddressLimiter
from p2p_shared.registry import HolderRegistry, NotRegistrant, RegistryFull

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
        received = len(data)
        if self.sealer is not None:
            try:
                data = self.sealer.open(data, now)
            except AuthError as exc:
                full = exc.reason == "nonce memory full"  # members beyond what the replay memory holds
                self.metrics.refused.labels("nonces_full" if full else "unauthenticated").inc()
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
        unproven = True  # the sender has not shown it receives at its address
        if version not in messages.TRACKER_VERSIONS:
            version = TRACKER_VERSION
            self.metrics.malformed.labels("unsupported_version").inc()
            *older, newest = messages.TRACKER_VERSIONS
            versions = f"{', '.join(map(str, older))} and {newest}"
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
            unproven = False
            answer = self._dispatch(message, source, now)
            if answer is None:
                return None
            reply = answer
        if isinstance(reply, messages.ErrorReply) and reply.code == "forbidden" and version < 3:
            reply = reply.model_copy(update={"code": "malformed"})
        reply = reply.model_copy(update={"txn": message.txn, "v": version})
        if unproven:
            return self._no_larger(reply, received, now)
        while True:
            try:
                data = messages.encode(reply)
                return data if self.sealer is None else self.sealer.seal(data, now)
            except LocalProtocolError:
                # Only long advertised host names make peer lists this large: send fewer peers.
                if not isinstance(reply, messages.Peers) or not (reply.peers or reply.partial):
                    raise
                reply = _halve_longer_list(reply)

    def _no_larger(self, reply: messages.Reply, limit: int, now: float) -> bytes | None:
        """The answer to an unproven sender, if it fits in the `limit` bytes it sent (an error
        without its text if need be); else nothing. A spoofed source gains nothing by it."""
        candidates = [reply]
        if isinstance(reply, messages.ErrorReply) and reply.message:
            candidates.append(reply.model_copy(update={"message": ""}))
        for candidate in candidates:
            data = messages.encode(candidate)
            data = data if self.sealer is None else self.sealer.seal(data, now)
            if len(data) <= limit:
                return data
        if isinstance(reply, messages.Connected):
            self.metrics.refused.labels("unpadded").inc()
        return None

    def _holder(self, host: str | None, port: int, source: tuple[str, int]) -> tuple[str, int] | messages.ErrorReply:
        """The holder a request speaks for: at the sender's own address, unless a member names another."""
        if host is None or self.sealer is not None or _same_address(host, source[0]):
            return (host or source[0], port)
        self.metrics.refused.labels("foreign_host").inc()
        return messages.ErrorReply(
            code="forbidden",
            message=f"host {host} is not the sender's address {source[0]}: only a swarm member may name another",
        )

    def _not_registrant(self, exc: NotRegistrant) -> messages.ErrorReply:
        self.metrics.refused.labels(exc.reason).inc()
        return messages.ErrorReply(code="forbidden", message=str(exc))

    def _dispatch(self, message: messages.Message, source: tuple[str, int], now: float) -> messages.Reply | None:
        member = self.sealer is not None  # every datagram that got here was sealed with the secret
        match message:
            case messages.Register(port=port, host=host, files=files, partial=partial):
                key = self._holder(host, port, source)
                if isinstance(key, messages.ErrorReply):
                    return key
                try:
                    result = self.registry.register(key, files, now, partial=partial, sender=source, member=member)
                except NotRegistrant as exc:
                    return self._not_registrant(exc)
                except RegistryFull as exc:
                    self.metrics.registrations.labels("rejected").inc()
                    self.metrics.refused.labels(exc.reason).inc()
                    return messages.ErrorReply(code="full", message=str(exc))
                self.metrics.registrations.labels(result).inc()
                if result == "new":
                    log.info("holder registered", holder=f"{key[0]}:{key[1]}", files=len(files), partial=partial)
                return messages.Ack(interval=self.interval)
            case messages.Heartbeat(port=port, host=host):
                key = self._holder(host, port, source)
                if isinstance(key, messages.ErrorReply):
                    return key
                try:
                    known = self.registry.heartbeat(key, now, sender=source, member=member)
                except NotRegistrant as exc:  # not a holder of this sender's: unknown to it
                    self.metrics.refused.labels(exc.reason).inc()
                    known = False
                if not known:
                    self.metrics.heartbeats.labels("unknown").inc()
                    return messages.ErrorReply(code="unknown_seeder", message="register again")
                self.metrics.heartbeats.labels("ok").inc()
                return messages.Ack(interval=self.interval)
            case messages.Unregister(port=port, host=host):
                key = self._holder(host, port, source)
                if isinstance(key, messages.ErrorReply):
                    return key
                try:
                    if self.registry.unregister(key, sender=source, member=member):
                        self.metrics.unregistrations.inc()
                        log.info("holder unregistered", holder=f"{key[0]}:{key[1]}")
                except NotRegistrant as exc:
                    return self._not_registrant(exc)
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
            case messages.ListFiles(v=v, after=after):
                # One page, O(log n + page): versions 1 and 2, without a cursor, get the first.
                rows = self.registry.files(after=after, limit=MAX_FILES_PER_ANSWER + 1)
                page = rows[:MAX_FILES_PER_ANSWER]
                return messages.Files(
                    v=v,
                    files=[
                        messages.FileSummary(**entry.model_dump(), seeders=complete, partial=None if v == 1 else partial)
                        for entry, complete, partial in page
                    ],
                    total=self.registry.file_count,
                    next=page[-1][0].file_id if len(rows) > len(page) and v >= 3 else None,
                )
        # An answer type sent to the tracker: drop it rather than reflect anything.
        self.metrics.malformed.labels("unexpected").inc()
        return None

    def expire(self, now: float) -> None:
        for host, port in self.registry.expire(now):
            self.metrics.expirations.inc()
            log.info("holder expired", holder=f"{host}:{port}")


def _same_address(host: str, address: str) -> bool:
    """Whether an advertised host is the source address itself (as text, or the same IP)."""

    def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        parsed = ipaddress.ip_address(text)
        return getattr(parsed, "ipv4_mapped", None) or parsed

    try:
        return host == address or ip(host) == ip(address)
    except ValueError:
        return False


def _halve_longer_list(reply: messages.Peers) -> messages.Peers:
    """The answer with half of its longer peer list (the partial one on a tie)."""
    partial = reply.partial or []
    if len(partial) >= len(reply.peers):
        return reply.model_copy(update={"partial": partial[: len(partial) // 2]})
    return reply.model_copy(update={"peers": reply.peers[: len(reply.peers) // 2]})
