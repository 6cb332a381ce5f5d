"""One download's supervision on a fake clock: when to look up again, whom to connect to, what a
peer's failure means, and when (and why) the download has stalled."""

import random

import pytest

from p2p_shared.errors import (
    PeerBanned,
    PeerClosed,
    PeerConnectError,
    PeerError,
    PeerRejected,
    PeerTimeout,
    RemoteProtocolError,
)
from p2p_shared.plan import ChunkPlan
from p2p_shared.supervisor import FIRST_REFRESH, Ending, Supervisor

WAIT = 30.0


def supervisor(max_peers: int = 8, refresh: float = 5.0, now: float = 0.0) -> Supervisor:
    return Supervisor(WAIT, max_peers, refresh, now, rng=random.Random(0))


def lookups(sup: Supervisor, until: float, connected: int, step: float = 0.05) -> list[float]:
    """The moments a loop that asks every `step` seconds looks the file up."""
    times = []
    for k in range(1, int(until / step) + 1):
        now = round(k * step, 6)
        if sup.lookup_due(now, connected):
            times.append(now)
    return times


# -- lookups ------------------------------------------------------------------------------------------


def test_lookups_come_soon_then_less_often_up_to_the_refresh_interval():
    sup = supervisor(refresh=2.0)
    assert FIRST_REFRESH == 0.25
    # Intervals 0.25, 0.5, 1, 2, 2, ... after the start.
    assert lookups(sup, 10.0, connected=1) == [0.25, 0.75, 1.75, 3.75, 5.75, 7.75, 9.75]


def test_lookups_stay_at_the_first_interval_while_nothing_is_connected():
    sup = supervisor(refresh=2.0)
    assert lookups(sup, 1.0, connected=0) == [0.25, 0.5, 0.75, 1.0]
    # Once connected, the interval goes on from where the doubling got to.
    assert sup.next_lookup(connected=0) == pytest.approx(1.25)
    assert sup.next_lookup(connected=3) == pytest.approx(1.0 + 2.0)


def test_a_lookup_is_not_due_twice_at_the_same_moment():
    sup = supervisor()
    assert not sup.lookup_due(0.2, connected=0)
    assert sup.lookup_due(0.25, connected=0)
    assert not sup.lookup_due(0.25, connected=0)
    assert sup.next_lookup(connected=1) == pytest.approx(0.25 + 0.5)


# -- candidates -------------------------------------------------------------------------------------


def test_candidates_are_origins_first_within_max_peers():
    sup = supervisor(max_peers=3)
    sup.meet(complete=["o1", "o2"], partial=["p1", "p2", "p3"])
    picks = sup.candidates([], 0.0)
    assert len(picks) == 3 and set(picks[:2]) == {"o1", "o2"} and picks[2] in {"p1", "p2", "p3"}
    assert sup.candidates(["o1", "o2", "p1"], 0.0) == []  # no room
    assert sup.candidates(["o1", "p1"], 0.0) == ["o2"]  # one place left: the origin takes it


def test_a_peer_met_later_as_complete_counts_as_an_origin():
    sup = supervisor(max_peers=1)
    sup.meet(complete=[], partial=["x", "y"])
    sup.meet(complete=["y"], partial=[])  # it finished its download: a complete holder now
    assert sup.candidates([], 0.0) == ["y"]
    sup.meet(complete=[], partial=["y"])  # listed as partial again: still known as an origin
    assert sup.book.is_origin("y")


def test_candidates_leave_out_active_backing_off_and_banned_peers():
    sup = supervisor()
    sup.meet(complete=["busy", "failed", "banned"], partial=["free"])
    sup.ended("failed", PeerClosed("gone"), "failed", 0.0)
    sup.ended("banned", PeerBanned("bad data"), "banned", 0.0)
    assert sup.candidates(["busy"], 0.0) == ["free"]
    assert sorted(sup.candidates(["busy"], 100.0)) == ["failed", "free"]  # backed off long enough; banned for good


def test_candidates_shuffle_peers_of_one_kind():
    orders = set()
    for seed in range(20):
        sup = Supervisor(WAIT, 8, 5.0, 0.0, rng=random.Random(seed))
        sup.meet(complete=[], partial=list("abcdef"))
        orders.add(tuple(sup.candidates([], 0.0)))
    assert len(orders) > 1


# -- a peer's end -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reason", "dropped"),
    [
        (PeerBanned("sent garbage"), "bad_peer", "bad_data"),
        (RemoteProtocolError("bad frame"), "protocol", "protocol"),
    ],
)
def test_bad_data_or_a_broken_protocol_bans_the_peer(exc, reason, dropped):
    sup = supervisor()
    sup.meet(complete=["p"], partial=[])
    assert sup.ended("p", exc, "host:1", 0.0) == Ending(reason, dropped=dropped)
    assert sup.book.banned("p") == str(exc)
    assert sup.candidates([], 1000.0) == []
    assert sup.last_failure == f"host:1: {exc}"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (PeerTimeout("slow"), "timeout"),
        (PeerClosed("closed"), "connection"),
        (PeerConnectError("refused"), "connection"),
        (ConnectionResetError("reset"), "connection"),
        (PeerRejected("unavailable", "busy"), "peer_error"),
        (PeerError("other"), "peer_error"),
    ],
)
def test_other_failures_back_off_longer_each_time(exc, reason):
    sup = supervisor()
    sup.meet(complete=[], partial=["p"])
    first = sup.ended("p", exc, "p", 0.0)
    assert first == Ending(reason, failures=1) and first.dropped is None
    assert sup.candidates([], 0.0) == []
    assert sup.candidates([], 0.5) == ["p"]  # 0.5 s after a first failure
    second = sup.ended("p", exc, "p", 1.0)
    assert second.failures == 2
    assert sup.candidates([], 1.5) == [] and sup.candidates([], 2.0) == ["p"]  # 1 s after a second
    assert sup.book.banned("p") is None


def test_back_off_is_capped():
    sup = supervisor()
    sup.meet(complete=[], partial=["p"])
    for _ in range(20):
        sup.ended("p", PeerTimeout("slow"), "p", 0.0)
    assert sup.candidates([], 5.0) == ["p"]


def test_a_delivered_chunk_resets_the_failures_and_the_stall_clock():
    sup = supervisor()
    sup.meet(complete=[], partial=["p"])
    sup.ended("p", PeerClosed("x"), "p", 0.0)
    sup.ended("p", PeerClosed("x"), "p", 0.0)
    sup.delivered("p", 20.0)
    assert sup.progress_at == 20.0
    assert sup.ended("p", PeerClosed("x"), "p", 21.0).failures == 1  # counts again from one


# -- stalls -------------------------------------------------------------------------------------------


def test_no_stall_within_wait_seconds_of_the_start_or_the_last_chunk():
    sup = supervisor(now=10.0)
    plan = ChunkPlan(4)
    assert sup.stalled(10.0 + WAIT, 0, plan) is None
    assert sup.stalled(10.0 + WAIT + 0.1, 0, plan) == "no holder reachable"
    sup.meet(complete=["p"], partial=[])
    sup.delivered("p", 50.0)
    assert sup.stalled(50.0 + WAIT, 0, plan) is None


def test_stalled_with_no_peer_connected_says_why_the_last_one_ended():
    sup = supervisor()
    sup.meet(complete=["p"], partial=[])
    sup.ended("p", PeerConnectError("cannot connect to h:1: refused"), "h:1", 1.0)
    assert sup.stalled(WAIT + 1, 0, ChunkPlan(4)) == "no holder reachable (last: h:1: cannot connect to h:1: refused)"


def test_stalled_with_peers_that_hold_nothing_we_miss():
    plan = ChunkPlan(4, done={0, 1})
    plan.add_peer("a", have={0})
    plan.add_peer("b", have={1})
    message = supervisor().stalled(WAIT + 1, 2, plan)
    assert message == "the 2 connected peers hold none of the 2 chunks missing"


def test_stalled_with_peers_that_hold_what_we_miss_but_deliver_nothing():
    plan = ChunkPlan(4)
    plan.add_peer("a")
    sup = supervisor()
    assert sup.stalled(WAIT + 1, 1, plan) == "1 peers connected, none delivered a valid chunk"
    sup.meet(complete=["a"], partial=[])
    sup.ended("a", PeerBanned("a sent 3 chunks that failed verification"), "a", 2.0)
    assert sup.stalled(WAIT + 1, 1, plan) == (
        "1 peers connected, none delivered a valid chunk (last: a: a sent 3 chunks that failed verification)"
    )
