"""The tracker's asyncio shell: datagrams in, the core's decisions, the store awaited, answers out.

With the memory store a request is answered within `datagram_received` (its calls never wait);
with a remote store each request that needs it becomes a task, at most MAX_PENDING at once, so a
slow store bounds memory and tasks instead of piling them up (the rest: refused, `busy`)."""

from __future__ import annotations

import asyncio
import time

import structlog

from p2p_shared.registry import Refused

from .core import StoreStep, TrackerCore
from .store import RegistryStore, StoreUnavailable

log = structlog.get_logger()

MAX_PENDING = 1024  # requests waiting for a remote store at once


async def handle(core: TrackerCore, store: RegistryStore, data: bytes, source: tuple[str, int], now: float) -> bytes | None:
    """The answer to one datagram (None: send nothing): the core decides, the store is awaited."""
    step = core.receive(data, source, now)
    if not isinstance(step, StoreStep):
        return step
    try:
        if step.nonce is not None and not await store.remember_nonce(step.nonce, core.sealer.replay_seconds):
            return core.replayed(source)
        if step.call is None:
            return step.answer(None)
        try:
            outcome = await step.call(store)
        except Refused as exc:
            outcome = exc
    except StoreUnavailable as exc:
        return core.unavailable(step, exc)
    return step.answer(outcome)


class TrackerProtocol(asyncio.DatagramProtocol):
    def __init__(self, core: TrackerCore, store: RegistryStore) -> None:
        self.core = core
        self.store = store
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        request = handle(self.core, self.store, data, addr, time.time())
        if self.store.immediate:
            try:
                request.send(None)
            except StopIteration as done:
                self._send(done.value, addr)
                return
            request.close()
            raise RuntimeError("a call of the memory store waited")
        if len(self._pending) >= MAX_PENDING:
            request.close()
            self.core.metrics.refused.labels("busy").inc()
            return
        task = asyncio.ensure_future(self._answer(request, addr))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _answer(self, request, addr) -> None:
        try:
            self._send(await request, addr)
        except Exception:  # a bug must not stop the tracker: said, and the request dropped
            log.exception("request failed", source=addr[0])

    def _send(self, answer: bytes | None, addr) -> None:
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error", error=str(exc))
