"""The tracker's request handling without I/O: datagram and source address in, answer out.

A request that needs the registry store is answered in two steps, so the store may be remote:
`receive` decodes and checks the datagram and returns a StoreStep (what to ask the store); the
asyncio shell (shell.handle) awaits that call on the store, and the step's `answer` turns what
the store said into the datagram to send. Everything else is answered by `receive` at once.

Each request is answered in the protocol version it was asked in (messages.TRACKER_VERSIONS):
a version 1 client never hears of partial holders, versions 1 and 2 never of `forbidden`.

A `drop` (version 4) is refused like an unregister (`forbidden`: a holder another address
registered), and answered `unknown_seeder` for a holder the tracker does not know (expired, or the
tracker restarted): the sender's other files are not registered either, so it registers again.
A `claim` (version 5) speaks for a holder as the others do; the lease needs no registration.

What the tracker believes: a sender that has not proven it receives at its source address
(no valid connection id yet) gets no answer larger than what it sent. A proven sender speaks for
its own address only: a holder at another host needs the swarm secret, which makes every sender
a member. A holder belongs to the address that registered it, any port of it (registry.NotRegistrant)."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from operator import methodcaller
from typing import Any

import structlog

from p2p_shared import TRACKER_VERSION, messages
from p2p_shared.auth import AuthError, ConnectionIds, Sealer
from p2p_shared.errors import LocalProtocolError, RemoteProtocolError
from p2p_shared.limits import MAX_FILES_PER_ANSWER
from p2p_shared.ratelimit import AddressLimiter
from p2p_shared.registry import HolderKey, NotRegistrant, RegistryFull

from .metrics import TrackerMetrics
from .store import Found, RegistryStore, StoreUnavailable

log = structlog.get_logger()


class StoreStep:
    """A request waiting for the store: the shell awaits `nonce` into the shared replay memory
    (if set), then `call(store)`, and sends `answer(outcome)`, the outcome being what the call
    returned or the registry.Refused it raised; or `core.unavailable(step, error)`."""

    __slots__ = ("call", "nonce", "version", "_then", "_finish")

    def __init__(
        self,
        call: Callable[[RegistryStore], Awaitable[Any]] | None,
        then: Callable[[Any], messages.Reply | None],
        finish: Callable[[messages.Reply | None], bytes | None],
        version: int,
        nonce: bytes | None = None,
    ) -> None:
        self.call, self._then, self._finish, self.version, self.nonce = call, then, finish, version, nonce

    def answer(self, outcome: Any) -> bytes | None:
        return self._finish(self._then(outcome))

    def answer_with(self, reply: messages.Reply) -> bytes | None:
        """An answer of the core's own instead (the store failed)."""
        return self._finish(reply)


class TrackerCore:
    def __init__(
        self,
        metrics: TrackerMetrics,
        interval: float,
        max_peers: int,
        limiter: AddressLimiter | None = None,
        ids: ConnectionIds | None = None,
        sealer: Sealer | None = None,
        shared_nonces: bool = False,
    ) -> None:
        self.metrics = metrics
        self.interval = interval
        self.max_peers = max_peers
        self.limiter = limiter
        self.ids = ids or ConnectionIds()
        self.sealer = sealer  # the swarm secret, when one is set
        # Replicas share the replay memory in their store: the sealer only checks macs and times.
        self.shared_nonces = shared_nonces

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> bytes | None | StoreStep:
        """The answer to one datagram (None: drop it), or the StoreStep it waits for. Never
        raises for bad input."""
        if self.limiter is not None and not self.limiter.allow(source[0], now):
            self.metrics.refused.labels("rate_limited").inc()
            return None
        received = len(data)
        nonce = None
        if self.sealer is not None:
            try:
                if self.shared_nonces:
                    data, nonce = self.sealer.verify(data, now)
                else:
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
        pending: _Call | None = None
        if version not in messages.TRACKER_VERSIONS:
            version = TRACKER_VERSION
            self.metrics.malformed.labels("unsupported_version").inc()
            *older, newest = messages.TRACKER_VERSIONS
            versions = f"{', '.join(map(str, older))} and {newest}"
            reply: messages.Reply | None = messages.ErrorReply(
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
            if isinstance(answer, _Call):
                pending, reply = answer, None
            else:
                reply = answer

        def finish(reply: messages.Reply | None) -> bytes | None:
            return None if reply is None else self._encode(reply, message.txn, version, unproven, received, now)

        if pending is not None:
            return StoreStep(pending.call, pending.then, finish, version, nonce)
        if nonce is not None:  # answered once the replay memory has seen the nonce
            return StoreStep(None, lambda _: reply, finish, version, nonce)
        return finish(reply)

    def _encode(
        self, reply: messages.Reply, txn: int, version: int, unproven: bool, received: int, now: float
    ) -> bytes | None:
        if isinstance(reply, messages.ErrorReply) and reply.code == "forbidden" and version < 3:
            reply = reply.model_copy(update={"code": "malformed"})
        reply = reply.model_copy(update={"txn": txn, "v": version})
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

    def unavailable(self, step: StoreStep, error: StoreUnavailable) -> bytes | None:
        """The answer when the store failed: `unavailable` (version 3), nothing to older
        versions, which do not know the code and retry as for a lost datagram."""
        self.metrics.store_errors.labels(error.reason).inc()
        self.metrics.store_up.set(0)
        log.debug("registry store unavailable", error=str(error))
        if step.version < 3:
            return None
        return step.answer_with(messages.ErrorReply(code="unavailable", message="registry store unavailable: retry later"))

    def replayed(self, source: tuple[str, int]) -> None:
        """A sealed datagram whose nonce the shared replay memory had seen."""
        self.metrics.refused.labels("unauthenticated").inc()
        log.debug("datagram refused", source=source[0], reason="replayed")

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

    def _dispatch(
        self, message: messages.Message, source: tuple[str, int], now: float
    ) -> messages.Reply | None | _Call:
        member = self.sealer is not None  # every datagram that got here was sealed with the secret
        match message:
            case messages.Register(port=port, host=host, files=files, partial=partial):
                key = self._holder(host, port, source)
                if isinstance(key, messages.ErrorReply):
                    return key
                return _Call(
                    methodcaller("register", key, files, now, partial=partial, sender=source, member=member),
                    lambda result: self._registered(key, len(files), partial, result),
                )
            case messages.Heartbeat(port=port, host=host):
                key = self._holder(host, port, source)
                if isinstance(key, messages.ErrorReply):
                    return key
                return _Call(methodcaller("heartbeat", key, now, sender=source, member=member), self._beaten)
            case messages.Unregister(port=port, host=host):
                key = self._holder(host, port, source)
                if isinstance(key, messages.ErrorReply):
                    return key
                return _Call(
                    methodcaller("unregister", key, sender=source, member=member),
                    lambda known: self._unregistered(key, known),
                )
            case messages.Drop(port=port, host=host, files=files):
                key = self._holder(host, port, source)
                if isinstance(key, messages.ErrorReply):
                    return key
                return _Call(
                    methodcaller("drop", key, files, now, sender=source, member=member),
                    lambda known: self._dropped(key, files, known),
                )
            case messages.Claim(key=lease, port=port, host=host, release=release):
                key = self._holder(host, port, source)
                if isinstance(key, messages.ErrorReply):
                    return key
                return _Call(
                    methodcaller("claim", lease, key, now, release=release),
                    lambda outcome: self._leased(key, release, outcome),
                )
            case messages.Lookup(v=v, name=name, file_id=file_id, port=port, host=host):
                asker = None if port is None else (host or source[0], port)
                lookup = methodcaller("lookup", name=name, file_id=file_id, limit=self.max_peers, exclude=asker)
                return _Call(lookup, lambda found: self._found(v, found))
            case messages.ListFiles(v=v, after=after):
                # One page, O(log n + page): versions 1 and 2, without a cursor, get the first.
                page = methodcaller("list_files", after=after, limit=MAX_FILES_PER_ANSWER + 1)
                return _Call(page, lambda listed: self._listed(v, *listed))
        # An answer type sent to the tracker: drop it rather than reflect anything.
        self.metrics.malformed.labels("unexpected").inc()
        return None

    # -- what the store said, as answers -------------------------------------------------------

    def _registered(self, key: HolderKey, files: int, partial: bool, result: Any) -> messages.Reply:
        if isinstance(result, NotRegistrant):
            return self._not_registrant(result)
        if isinstance(result, RegistryFull):
            self.metrics.registrations.labels("rejected").inc()
            self.metrics.refused.labels(result.reason).inc()
            return messages.ErrorReply(code="full", message=str(result))
        self.metrics.registrations.labels(result).inc()
        if result == "new":
            log.info("holder registered", holder=f"{key[0]}:{key[1]}", files=files, partial=partial)
        return messages.Ack(interval=self.interval)

    def _beaten(self, known: Any) -> messages.Reply:
        if isinstance(known, NotRegistrant):  # not a holder of this sender's: unknown to it
            self.metrics.refused.labels(known.reason).inc()
            known = False
        if not known:
            self.metrics.heartbeats.labels("unknown").inc()
            return messages.ErrorReply(code="unknown_seeder", message="register again")
        self.metrics.heartbeats.labels("ok").inc()
        return messages.Ack(interval=self.interval)

    def _unregistered(self, key: HolderKey, known: Any) -> messages.Reply:
        if isinstance(known, NotRegistrant):
            return self._not_registrant(known)
        if known:
            self.metrics.unregistrations.inc()
            log.info("holder unregistered", holder=f"{key[0]}:{key[1]}")
        return messages.Ack(interval=self.interval)

    def _dropped(self, key: HolderKey, files: list[str], known: Any) -> messages.Reply:
        if isinstance(known, NotRegistrant):
            return self._not_registrant(known)
        if not known:
            return messages.ErrorReply(code="unknown_seeder", message="register again")
        dropped = len(set(files))
        self.metrics.drops.inc(dropped)
        log.info("holder dropped files", holder=f"{key[0]}:{key[1]}", files=dropped)
        return messages.Ack(interval=self.interval)

    def _leased(self, key: HolderKey, release: bool, outcome: Any) -> messages.Reply:
        if isinstance(outcome, RegistryFull):
            self.metrics.refused.labels(outcome.reason).inc()
            return messages.ErrorReply(code="full", message=str(outcome))
        holder, ttl = outcome
        self.metrics.claims.labels("released" if release and holder is None else "granted" if holder == key else "held").inc()
        return messages.Lease(holder=holder, mine=holder == key, ttl=ttl)

    def _found(self, v: int, found: Found) -> messages.Reply:
        if found.entry is None or (v == 1 and not found.complete):  # version 1: no seeder, no file
            self.metrics.lookups.labels("not_found").inc()
            return messages.Peers(partial=None if v == 1 else [])
        self.metrics.lookups.labels("found").inc()
        # Hot path: everything in the answer was validated when it was registered.
        return messages.Peers.model_construct(
            file=found.entry, peers=found.complete, partial=None if v == 1 else found.partial, v=v, txn=0, type="peers"
        )

    def _listed(self, v: int, rows: list, total: int) -> messages.Reply:
        page = rows[:MAX_FILES_PER_ANSWER]
        return messages.Files(
            v=v,
            files=[
                messages.FileSummary(**entry.model_dump(), seeders=complete, partial=None if v == 1 else partial)
                for entry, complete, partial in page
            ],
            total=total,
            next=page[-1][0].file_id if len(rows) > len(page) and v >= 3 else None,
        )

    def expired(self, holders: list[HolderKey]) -> None:
        """Count and log the holders an expiry sweep forgot."""
        for host, port in holders:
            self.metrics.expirations.inc()
            log.info("holder expired", holder=f"{host}:{port}")

    def store_failed(self, error: StoreUnavailable) -> None:
        """A sweep (expiry, the registry's size) the store did not answer."""
        self.metrics.store_errors.labels(error.reason).inc()
        self.metrics.store_up.set(0)
        log.warning("registry store unavailable", error=str(error))


class _Call:
    """What `_dispatch` asks of the store, and what to make of its outcome."""

    __slots__ = ("call", "then")

    def __init__(self, call: Callable[[RegistryStore], Awaitable[Any]], then: Callable[[Any], messages.Reply]) -> None:
        self.call, self.then = call, then


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
