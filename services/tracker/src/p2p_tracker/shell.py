"""The tracker's asyncio shell: datagrams in, the core's decisions, the store awaited, answers out.

With the memory store a request is answered within `datagram_received` (its calls never wait).
With a remote store, requests are answered in batches, one round trip each (store.run): while a
batch is with the store, the requests that arrive wait for the next one, at most MAX_WAITING of
them, so a slow store bounds memory instead of piling requests up (beyond: dropped, counted
`busy`). One batch in flight made the largest batches and the most requests/s here (8,000/s
against 5,000/s with four in flight, bench/run.py --only tracker)."""

from __future__ import annotations

import asyncio
import time

import structlog

from .core import StoreStep, TrackerCore
from .store import RegistryStore, StoreUnavailable

log = structlog.get_logger()

MAX_BATCHES = 1  # batches with a remote store at once
MAX_BATCH = 256  # requests in one
MAX_WAITING = 4096  # requests waiting for a batch


async def handle(core: TrackerCore, store: RegistryStore, data: bytes, source: tuple[str, int], now: float) -> bytes | None:
    """The answer to one datagram (None: send nothing): the core decides, the store is awaited."""
    step = core.receive(data, source, now)
    if not isinstance(step, StoreStep):
        return step
    [answer] = await answer_steps(core, store, [(step, source)])
    return answer


async def answer_steps(
    core: TrackerCore, store: RegistryStore, steps: list[tuple[StoreStep, tuple[str, int]]]
) -> list[bytes | None]:
    """The answers to requests waiting for the store: their nonces checked against the shared
    replay memory first (when the swarm secret is set), then their calls, each in one round trip."""
    answers: list[bytes | None] = [None] * len(steps)
    try:
        sealed = [i for i, (step, _) in enumerate(steps) if step.nonce is not None]
        if sealed:
            assert core.sealer is not None
            fresh = await store.remember_nonces([steps[i][0].nonce for i in sealed], core.sealer.replay_seconds)
            replays = {i for i, new in zip(sealed, fresh) if not new}
            for i in replays:
                core.replayed(steps[i][1])
        else:
            replays = set()
        live = [i for i in range(len(steps)) if i not in replays]
        calling = [i for i in live if steps[i][0].call is not None]
        outcomes = dict(zip(calling, await store.run([steps[i][0].call for i in calling]))) if calling else {}
    except StoreUnavailable as exc:
        return [core.unavailable(step, exc) for step, _ in steps]
    for i in live:
        answers[i] = steps[i][0].answer(outcomes.get(i))
    return answers


class TrackerProtocol(asyncio.DatagramProtocol):
    def __init__(self, core: TrackerCore, store: RegistryStore) -> None:
        self.core = core
        self.store = store
        self.transport: asyncio.DatagramTransport | None = None
        self._waiting: list[tuple[StoreStep, tuple]] = []  # the next batch
        self._batches: set[asyncio.Task] = set()
        self._flush_due = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        step = self.core.receive(data, addr, time.time())
        if not isinstance(step, StoreStep):
            self._send(step, addr)
        elif self.store.immediate:
            self._send(_at_once(answer_steps(self.core, self.store, [(step, addr)]))[0], addr)
        elif len(self._waiting) >= MAX_WAITING:
            self.core.metrics.refused.labels("busy").inc()
        else:
            self._waiting.append((step, addr))
            if not self._flush_due:  # once this loop iteration has read what it could
                self._flush_due = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        while self._waiting and len(self._batches) < MAX_BATCHES:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            task = asyncio.ensure_future(self._answer(batch))
            self._batches.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._batches.discard(task)
        self._flush()  # what waited meanwhile goes now

    async def _answer(self, batch: list[tuple[StoreStep, tuple]]) -> None:
        try:
            answers = await answer_steps(self.core, self.store, batch)
        except Exception:  # a bug must not stop the tracker: said, and the requests dropped
            log.exception("requests failed", count=len(batch))
            return
        for answer, (_, addr) in zip(answers, batch):
            self._send(answer, addr)

    def _send(self, answer: bytes | None, addr) -> None:
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error", error=str(exc))


def _at_once(request):
    """The result of a coroutine that never waits (the memory store's calls), without a task."""
    try:
        request.send(None)
    except StopIteration as done:
        return done.value
    request.close()
    raise RuntimeError("a call of the memory store waited")
