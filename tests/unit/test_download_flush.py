"""The download shell's flush of queued frames, on real event loops: announcements that wait for
a request to go with (Swarm.take_due) still go out when due, with no frame to carry them."""

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from p2p_shared import wire
from p2p_shared.net.download import Download, DownloadMetrics
from p2p_shared.settings import DownloadSettings
from p2p_shared.swarm import ANNOUNCE_DELAY

from .test_swarm import deliver, join, swarm


class Sent:
    """Stands in for a peer's worker: what its flush sends, and a wake-up when frames go."""

    def __init__(self, download: Download, peer: str) -> None:
        self.download, self.peer = download, peer
        self.frames: list[wire.Event] = []
        self.arrived = asyncio.Event()

    def flush(self) -> None:
        if frames := self.download.swarm.take_due(self.peer, asyncio.get_running_loop().time()):
            self.frames += frames
            self.arrived.set()


def loops():
    yield pytest.param(asyncio.new_event_loop, id="asyncio")
    try:
        import uvloop
    except ImportError:
        return
    yield pytest.param(uvloop.new_event_loop, id="uvloop")  # (its timer handles have no when())


@pytest.mark.parametrize("new_loop", list(loops()))
def test_announcements_left_waiting_go_out_when_due_and_no_sooner(tmp_path, new_loop):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        download = Download("f", DownloadSettings(), None, DownloadMetrics(CollectorRegistry(), "t"), None,  # type: ignore[arg-type]
                            lambda m: tmp_path / m.name)
        s = download.swarm = swarm(8, depth=1)
        [asked] = join(s, "origin", {0, 1, 2, 3}, origin=True)
        join(s, "idle", {4, 5, 6, 7})  # it has what we want, but our one request is the origin's
        s.take_due("idle", loop.time())
        workers = download._workers = {peer: Sent(download, peer) for peer in ("origin", "idle")}  # type: ignore[assignment]
        started = loop.time()
        deliver(s, "origin", asked, now=started)
        download.flush()  # the origin's next request goes; the idle peer's announcement waits
        download.flush()  # (again, with its timer set)
        assert workers["origin"].frames and not workers["idle"].frames
        await asyncio.wait_for(workers["idle"].arrived.wait(), 5)
        assert loop.time() >= started + ANNOUNCE_DELAY
        assert workers["idle"].frames == [wire.Announce(s.raw_id, (asked,))]
        download.close()

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
