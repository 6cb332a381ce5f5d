"""Request/answer over UDP with the tracker, retried with backoff because datagrams get lost.

The tracker may be several replicas that answer as one (they share their registry): given as a
list (`a:6969,b:6969`), or as one name that resolves to several addresses (a scaled Compose
service). The client talks to one address at a time, picked at random so clients spread over
the replicas, and moves to the next when it stops answering: an attempt that times out, a
kernel's "port unreachable", or the tracker's `unavailable` (its store did not answer). Each
retry goes to the next address; the backoff applies as before."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time

import structlog

from .. import messages
from ..auth import Sealer
from ..errors import HolderUnknown, RemoteProtocolError, TrackerRejected, TrackerUnavailable, TrackerUnreachable
from ..retry import backoff_delays, fit_budget

log = structlog.get_logger()

Endpoint = tuple[str, int]  # a tracker as configured: host name or address, port
Address = tuple[int, tuple]  # one resolved address: (socket family, socket address)


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: TrackerClient, address: Address) -> None:
        self._client = client
        self._address = address

    def datagram_received(self, data: bytes, addr) -> None:
        self._client._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # The socket is connected, so an ICMP "port unreachable" comes back as this error.
        if isinstance(exc, ConnectionRefusedError):
            self._client._on_refused(self._address)


class TrackerClient:
    def __init__(
        self,
        trackers: list[Endpoint],
        *,
        first_timeout: float = 0.5,
        attempts: int = 5,
        secret: bytes | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not trackers:
            raise ValueError("no tracker given")
        self.trackers = trackers
        self._sealer = Sealer(secret) if secret else None
        self._connection: tuple[int, float] | None = None  # (id, valid until loop time)
        self._delays = backoff_delays(first_timeout, max(attempts, len(trackers)))
        self._transport: asyncio.DatagramTransport | None = None
        self._address: Address | None = None  # the one in use
        self._waiting: dict[int, asyncio.Future] = {}
        self._sent_to: dict[int, Address] = {}  # where each waiting request went
        self._switching = asyncio.Lock()  # one change of address at a time, whoever asks
        self._rng = rng or random.Random()

    @property
    def label(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.trackers)

    @property
    def address(self) -> tuple | None:
        """The socket address of the tracker in use, if any."""
        return None if self._address is None else self._address[1]

    async def _resolve(self) -> list[Address]:
        """Every address of every tracker, resolved on every attempt: in containers a restarted
        tracker may come back elsewhere, and replicas come and go."""
        loop = asyncio.get_running_loop()
        found: list[Address] = []
        failures = []
        for host, port in self.trackers:
            literal = _address_literal(host, port)
            if literal is not None:  # an address, not a name: nothing to look up (no thread hop)
                if literal not in found:
                    found.append(literal)
                continue
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except socket.gaierror as exc:
                failures.append(f"{host!r}: {exc.strerror}")
                continue
            found += [(family, address) for family, _, _, _, address in infos if (family, address) not in found]
        if not found:
            hosts = "host" if len(failures) == 1 else "hosts"
            raise TrackerUnreachable(f"cannot resolve the tracker's {hosts} {'; '.join(failures)}")
        return found

    async def _use(self, avoid: list[Address]) -> Address:
        """The address to send to: the one in use unless it failed in this exchange, else the
        next one that did not (a random one at first). Requests under way at once (a holder's
        heartbeat, a download's lookup) share the socket, so they switch one at a time."""
        async with self._switching:
            return await self._choose(avoid)

    async def _choose(self, avoid: list[Address]) -> Address:
        addresses = await self._resolve()
        if self._address in addresses and self._address not in avoid:
            return self._address
        fresh = [a for a in addresses if a not in avoid] or addresses
        if self._address in addresses:  # the next after the one that failed, round the list
            start = addresses.index(self._address)
            fresh = sorted(fresh, key=lambda a: (addresses.index(a) - start - 1) % len(addresses))
            chosen = fresh[0]
        else:
            chosen = self._rng.choice(fresh)
        if self._address is not None and chosen != self._address:
            log.warning("tracker not answering; trying another", tracker=_show(self._address), next=_show(chosen))
        await self._connect(chosen)
        return chosen

    async def _connect(self, address: Address) -> None:
        # The socket is connected to the address, so the kernel reports a closed port to us.
        self.close()
        family, sockaddr = address
        self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _ClientProtocol(self, address), family=family, remote_addr=sockaddr
        )
        self._address = address

    def _on_refused(self, refused: Address) -> None:
        """Nothing listens at `refused`: the requests sent there fail now, not after a timeout."""
        address = _show(refused)
        error = TrackerUnreachable(f"tracker {address} refused: nothing listens on udp port {address.rpartition(':')[2]}")
        for txn, waiter in self._waiting.items():
            if self._sent_to.get(txn) == refused and not waiter.done():
                waiter.set_exception(error)

    def _on_datagram(self, data: bytes, addr) -> None:
        if self._address is None or tuple(addr[:2]) != tuple(self._address[1][:2]):
            return  # not from the tracker we asked
        try:
            if self._sealer is not None:
                data = self._sealer.open(data, time.time())
            reply = messages.decode(data)
        except RemoteProtocolError:  # AuthError included: not from our tracker
            return
        waiter = self._waiting.get(reply.txn)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    async def request(self, message: messages.Request, budget: float | None = None) -> messages.Reply:
        """Send until answered; TrackerUnavailable after the last attempt times out. A typed
        error answer raises TrackerRejected (HolderUnknown for a holder the tracker forgot).

        Requests other than `connect` carry a connection id, fetched (and renewed when the
        tracker asks) here. `budget` caps the time of each exchange, for periodic messages whose
        next round is a retry of its own (heartbeats, peer-list refreshes)."""
        if isinstance(message, messages.Connect):
            return await self._exchange(message, budget)
        for _ in range(2):
            proven = message.model_copy(update={"conn": await self._connection_id(budget)})
            reply = await self._exchange(proven, budget)
            if not (isinstance(reply, messages.ErrorReply) and reply.code == "connect_first"):
                break
            self._connection = None  # expired, or a restarted tracker: connect again
        if isinstance(reply, messages.ErrorReply):
            error = HolderUnknown if reply.code == "unknown_seeder" else TrackerRejected
            raise error(reply.code, reply.message)
        return reply

    async def _connection_id(self, budget: float | None) -> int:
        now = asyncio.get_running_loop().time()
        if self._connection is None or now >= self._connection[1]:
            reply = await self._exchange(messages.Connect(), budget)
            if not isinstance(reply, messages.Connected):
                raise TrackerRejected(getattr(reply, "code", "malformed"), f"unexpected {reply.type} answer to connect")
            self._connection = (reply.conn, now + 50.0)  # ids last 60 to 120 s at the tracker
        return self._connection[0]

    async def _exchange(self, message: messages.Request, budget: float | None) -> messages.Reply:
        delays = self._delays if budget is None else fit_budget(self._delays, budget)
        txn = self._rng.randrange(1, 2**32)
        payload = messages.encode_request(message.model_copy(update={"txn": txn}))
        loop = asyncio.get_running_loop()
        failed: list[Address] = []  # addresses that did not answer in this exchange
        refused: list[Address] = []
        unavailable = False
        try:
            for delay in delays:
                started = loop.time()
                waiter = self._waiting[txn] = loop.create_future()
                try:
                    address = self._sent_to[txn] = await self._use(failed)
                    assert self._transport is not None
                    # Sealed again on every attempt: the tracker refuses a repeated nonce.
                    data = payload if self._sealer is None else self._sealer.seal(payload, time.time())
                    self._transport.sendto(data)
                except OSError:
                    await asyncio.sleep(delay)
                    continue
                try:
                    reply = await asyncio.wait_for(asyncio.shield(waiter), delay)
                except TimeoutError:
                    failed.append(address)
                    continue
                except TrackerUnreachable:
                    failed.append(address)
                    refused.append(address)
                    if len(set(refused)) >= len(await self._resolve()):
                        raise  # every tracker refuses: nothing listens anywhere
                    continue
                if isinstance(reply, messages.ErrorReply) and reply.code == "unavailable":
                    # Its store did not answer: back off, then ask the next replica.
                    unavailable = True
                    failed.append(address)
                    await asyncio.sleep(max(0.0, started + delay - loop.time()))
                    continue
                return reply
        finally:
            self._sent_to.pop(txn, None)
            waiter = self._waiting.pop(txn, None)
            if waiter is not None:
                waiter.cancel()
        why = "its registry store did not answer" if unavailable else f"no answer after {len(delays)} attempts"
        raise TrackerUnavailable(f"tracker {self.label} unavailable: {why}")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self._address = None


def _address_literal(host: str, port: int) -> Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return socket.AF_INET, (host, port)
    return socket.AF_INET6, (host, port, 0, 0)


def _show(address: Address) -> str:
    host, port = address[1][:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
