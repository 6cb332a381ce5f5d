"""The chunk plan: dynamic scheduling, retries elsewhere, endgame."""

from hypothesis import given
from hypothesis import strategies as st

from p2p_shared.plan import ChunkPlan


def test_hands_out_every_chunk_once_then_finishes():
    plan = ChunkPlan(5)
    plan.add_peer("a")
    plan.add_peer("b")
    got = [plan.next_chunk("a"), plan.next_chunk("b"), plan.next_chunk("a")]
    assert got == [0, 1, 2]
    for i, peer in zip(got, "aba"):
        assert plan.complete(i, peer)
    assert [plan.next_chunk("a"), plan.next_chunk("a")] == [3, 4]
    plan.complete(3, "a")
    plan.complete(4, "a")
    assert plan.finished and plan.next_chunk("a") is None and plan.next_chunk("b") is None


def test_failed_chunk_goes_to_another_peer_first():
    plan = ChunkPlan(3)
    plan.add_peer("a")
    plan.add_peer("b")
    assert plan.next_chunk("a") == 0
    plan.fail(0, "a")
    assert plan.next_chunk("a") == 1  # not 0 again while b has not failed it
    assert plan.next_chunk("b") == 0  # the failed chunk is retried first


def test_failed_chunk_returns_to_the_same_peer_when_no_other_remains():
    plan = ChunkPlan(1)
    plan.add_peer("a")
    plan.add_peer("b")
    assert plan.next_chunk("a") == 0
    plan.fail(0, "a")
    plan.remove_peer("b")
    assert plan.next_chunk("a") == 0


def test_removed_peer_gives_back_its_chunks():
    plan = ChunkPlan(4, endgame_copies=1)
    plan.add_peer("a")
    plan.add_peer("b")
    taken = [plan.next_chunk("a"), plan.next_chunk("a")]
    assert plan.assigned("a") == set(taken)
    assert plan.remove_peer("a") == sorted(taken)
    assert [plan.next_chunk("b") for _ in range(4)] == [0, 1, 2, 3]
    assert plan.next_chunk("a") is None  # removed peers get nothing


def test_have_sets_are_respected():
    plan = ChunkPlan(4)
    plan.add_peer("partial", have={2, 3})
    assert plan.next_chunk("partial") == 2
    assert plan.next_chunk("partial") == 3
    assert plan.next_chunk("partial") is None


def test_endgame_duplicates_the_tail_and_first_copy_wins():
    plan = ChunkPlan(2)
    plan.add_peer("slow")
    plan.add_peer("fast")
    assert plan.next_chunk("slow") == 0
    assert plan.next_chunk("fast") == 1
    assert plan.complete(1, "fast")
    assert plan.next_chunk("fast") == 0  # nothing pending: duplicate the slow peer's chunk
    assert plan.next_chunk("fast") is None  # at most two copies, never twice to one peer
    assert plan.complete(0, "fast")
    assert not plan.complete(0, "slow")  # the late copy is discarded
    assert plan.finished and plan.assigned("slow") == set()


def test_resume_skips_chunks_already_done():
    plan = ChunkPlan(4, done={0, 2})
    plan.add_peer("a")
    assert [plan.next_chunk("a"), plan.next_chunk("a")] == [1, 3]
    assert plan.done_count == 2


@given(st.integers(1, 30), st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["ok", "fail", "drop"])), max_size=200))
def test_any_schedule_finishes_while_a_peer_remains(num_chunks, steps):
    plan = ChunkPlan(num_chunks)
    for p in "abc":
        plan.add_peer(p)
    for peer, outcome in steps:
        if peer not in plan.peers:
            continue
        index = plan.next_chunk(peer)
        if index is None:
            continue
        assert not plan.is_done(index)
        if outcome == "ok":
            plan.complete(index, peer)
        elif outcome == "fail":
            plan.fail(index, peer)
        elif len(plan.peers) > 1:
            plan.remove_peer(peer)
    survivor, *others = plan.peers
    for other in others:  # the last peer standing must get everything, even what it failed
        plan.remove_peer(other)
    for index in plan.assigned(survivor):  # requests it still has in flight arrive
        plan.complete(index, survivor)
    for _ in range(4 * num_chunks):
        index = plan.next_chunk(survivor)
        if index is None:
            break
        plan.complete(index, survivor)
    assert plan.finished


def test_a_completed_or_failed_chunk_is_no_longer_assigned_anywhere():
    plan = ChunkPlan(3)
    for peer in ("a", "b"):
        plan.add_peer(peer)
    assert [plan.next_chunk("a"), plan.next_chunk("a"), plan.next_chunk("b")] == [0, 1, 2]
    assert plan.next_chunk("b") in (0, 1)  # endgame copy of one of a's chunks
    copied = (plan.assigned("b") - {2}).pop()
    assert plan.complete(copied, "a")
    assert copied not in plan.assigned("a") | plan.assigned("b")  # the copy elsewhere is forgotten too
    plan.fail(2, "b")
    assert 2 not in plan.assigned("b")
    assert plan.next_chunk("a") == 2  # back in the plan, for the peer that did not fail it
    assert plan.remove_peer("a") == sorted({0, 1, 2} - {copied})


def test_a_late_failure_of_a_chunk_already_done_changes_nothing():
    plan = ChunkPlan(1)
    for peer in ("a", "b"):
        plan.add_peer(peer)
    assert plan.next_chunk("a") == 0 and plan.next_chunk("b") == 0
    assert plan.complete(0, "a")
    plan.fail(0, "b")
    assert plan.finished and plan.assigned("b") == set() and plan.remove_peer("b") == []


def test_releasing_a_chunk_another_peer_still_fetches_does_not_queue_it_twice():
    plan = ChunkPlan(1)
    for peer in ("a", "b", "c"):
        plan.add_peer(peer)
    assert plan.next_chunk("a") == 0 and plan.next_chunk("b") == 0
    assert plan.next_chunk("c") is None  # two copies at most
    assert plan.remove_peer("a") == []  # b still fetches it: nothing goes back to the queue
    assert plan.next_chunk("c") == 0  # a second copy again, since a left
    assert plan.remove_peer("b") == [] and plan.remove_peer("c") == [0]
    plan.add_peer("d")
    assert plan.next_chunk("d") == 0 and plan.next_chunk("d") is None


def test_unknown_peers_have_nothing_assigned_and_nothing_to_return():
    plan = ChunkPlan(2)
    assert plan.assigned("stranger") == set()
    assert plan.remove_peer("stranger") == []
    assert plan.next_chunk("stranger") is None


def test_a_failed_chunk_waits_for_a_holder_that_has_not_failed_it():
    plan = ChunkPlan(2)
    plan.add_peer("a")
    plan.add_peer("partial", have={1})  # cannot serve chunk 0
    assert plan.next_chunk("a") == 0
    plan.fail(0, "a")
    # The only other peer does not hold chunk 0, so a may retry it.
    assert plan.next_chunk("a") == 0


def test_endgame_copies_respect_have_sets_and_earlier_failures():
    plan = ChunkPlan(2)
    plan.add_peer("a")
    plan.add_peer("partial", have={1})
    plan.add_peer("failed")
    assert plan.next_chunk("a") == 0
    assert plan.next_chunk("failed") == 1
    plan.fail(1, "failed")
    assert plan.next_chunk("partial") == 1
    assert plan.next_chunk("partial") is None  # chunk 0 is in flight, but partial does not hold it
    assert plan.next_chunk("failed") == 0  # an endgame copy of a's chunk...
    assert plan.next_chunk("failed") is None  # ...but not of the chunk it failed, while partial fetches it
