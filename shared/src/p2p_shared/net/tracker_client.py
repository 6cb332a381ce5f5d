"""Request/answer over UDP with the tracker, retried with backoff because datagrams get lost."""

from __future__ import annotations

import asyncio
import random
import socket
import time

from .. import messages
from ..auth import Sealer
from ..errors import RemoteProtocolError, TrackerRejected, TrackerUnavailable, TrackerUnreachable
from ..retry import backoff_delays, fit_budget


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: TrackerClient) -> None:
        self._client = client

    def datagram_received(self, data: bytes, addr) -> None:
        self._client._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # The socket is connected, so an ICMP "port unreachable" comes back as this error.
        if isinstance(exc, ConnectionRefusedError):
            self._client._on_refused()


class TrackerClient:
    def __init__(
        self, host: str, port: int, *, first_timeout: float = 0.5, attempts: int = 5, secret: bytes | None = None
    ) -> None:
        self.host, self.port = host, port
        self._sealer = Sealer(secret) if secret else None
        self._connection: tuple[int, float] | None = None  # (id, valid until loop time)
        self._delays = backoff_delays(first_timeout, attempts)
        self._transport: asyncio.DatagramTransport | None = None
        self._address: tuple | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self._rng = random.Random()

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    async def _resolve(self) -> None:
        # Resolved on every attempt: in containers a restarted tracker may come back elsewhere.
        # The socket is connected to the address, so the kernel reports a closed port to us.
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise TrackerUnreachable(f"cannot resolve the tracker's host {self.host!r}: {exc.strerror}") from None
        family, _, _, _, address = infos[0]
        if self._transport is None or address != self._address:
            self.close()
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _ClientProtocol(self), family=family, remote_addr=address
            )
            self._address = address

    def _on_refused(self) -> None:
        error = TrackerUnreachable(f"tracker {self.label} refused: nothing listens on udp port {self.port}")
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(error)

    def _on_datagram(self, data: bytes, addr) -> None:
        if self._address is None or tuple(addr[:2]) != tuple(self._address[:2]):
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
        """Send until answered; TrackerUnavailable after the last attempt times out.

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
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[txn] = waiter
        try:
            for delay in delays:
                try:
                    await self._resolve()
                    assert self._transport is not None
                    # Sealed again on every attempt: the tracker refuses a repeated nonce.
                    data = payload if self._sealer is None else self._sealer.seal(payload, time.time())
                    self._transport.sendto(data)
                except TrackerUnreachable:
                    raise
                except OSError:
                    await asyncio.sleep(delay)
                    continue
                try:
                    return await asyncio.wait_for(asyncio.shield(waiter), delay)
                except TimeoutError:
                    continue
        finally:
            del self._waiting[txn]
            waiter.cancel()
        raise TrackerUnavailable(f"no answer from tracker {self.label} after {len(delays)} attempts")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self._address = None
