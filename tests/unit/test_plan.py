"""The chunk plan: dynamic scheduling over announced chunks, rarest first, the origin's upload
kept for new chunks, retries elsewhere, endgame."""

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from p2p_shared.plan import ChunkPlan


def sequential(num_chunks: int, **kwargs) -> ChunkPlan:
    """A plan whose random rank is the identity, so expected picks can be spelled out."""
    plan = ChunkPlan(num_chunks, random_first=0, **kwargs)
    plan._rank = list(range(num_chunks))
    plan._pending = dict.fromkeys(sorted(plan._pending))
    return plan


def test_hands_out_every_chunk_once_then_finishes():
    plan = ChunkPlan(5)
    plan.add_peer("a")
    plan.add_peer("b")
    got = [plan.next_chunk("a"), plan.next_chunk("b"), plan.next_chunk("a")]
    assert len(set(got)) == 3
    for i, peer in zip(got, "aba"):
        assert plan.complete(i, peer)
    rest = [plan.next_chunk("a"), plan.next_chunk("a")]
    assert sorted(got + rest) == [0, 1, 2, 3, 4]
    for i in rest:
        plan.complete(i, "a")
    assert plan.finished and plan.next_chunk("a") is None and plan.next_chunk("b") is None


def test_order_follows_a_random_rank_of_each_plan():
    firsts = set()
    for seed in range(20):
        plan = ChunkPlan(64, rng=random.Random(seed))
        plan.add_peer("seeder")
        firsts.add(plan.next_chunk("seeder"))
    assert len(firsts) > 5  # leechers of one swarm start on different chunks


def test_failed_chunk_goes_to_another_peer_first():
    plan = sequential(3)
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
    plan = sequential(4, endgame_copies=1)
    plan.add_peer("a")
    plan.add_peer("b")
    taken = [plan.next_chunk("a"), plan.next_chunk("a")]
    assert plan.assigned("a") == set(taken)
    assert plan.remove_peer("a") == sorted(taken)
    assert sorted(plan.next_chunk("b") for _ in range(4)) == [0, 1, 2, 3]
    assert plan.next_chunk("a") is None  # removed peers get nothing


def test_only_announced_chunks_are_asked_for_and_announcements_add_more():
    plan = ChunkPlan(4)
    plan.add_peer("partial", have={2, 3})
    assert {plan.next_chunk("partial"), plan.next_chunk("partial")} == {2, 3}
    assert plan.next_chunk("partial") is None
    plan.peer_has("partial", [0, 99, -1])  # out of range: ignored
    assert plan.next_chunk("partial") == 0
    assert plan.next_chunk("partial") is None


def test_rarest_chunk_first_after_the_random_first_picks():
    plan = ChunkPlan(6, random_first=0)
    plan.add_peer("a", have={0, 1, 2})
    plan.add_peer("b", have={0, 1})
    plan.add_peer("c", have={0})
    # Chunk 2 is held by one peer, 1 by two, 0 by three.
    assert [plan.availability(i) for i in range(3)] == [3, 2, 1]
    assert [plan.next_chunk("a") for _ in range(3)] == [2, 1, 0]


def test_random_first_picks_ignore_rarity():
    rare_first = 0
    for seed in range(40):
        plan = ChunkPlan(8, random_first=1, rng=random.Random(seed))
        plan.add_peer("a")
        plan.add_peer("b", have=range(1, 8))  # chunk 0 is the rarest
        rare_first += plan.next_chunk("a") == 0
    assert rare_first < 20  # a rarest-first pick would be 0 every time


def test_the_origin_is_not_asked_for_what_a_partial_holder_has():
    plan = sequential(4)
    plan.add_peer("origin", origin=True)
    plan.add_peer("leecher", have={0, 1})
    assert plan.next_chunk("origin") == 2  # 0 and 1 are left to the leecher
    assert plan.next_chunk("origin") == 3
    assert plan.next_chunk("origin") is None
    assert {plan.next_chunk("leecher"), plan.next_chunk("leecher")} == {0, 1}
    plan.remove_peer("leecher")  # gone: its chunks go back, and the origin may serve them
    assert plan.next_chunk("origin") in (0, 1)


def test_endgame_duplicates_only_when_nothing_is_left_unassigned():
    plan = sequential(3)
    plan.add_peer("slow")
    plan.add_peer("fast", have={1, 2})
    assert plan.next_chunk("slow") == 0
    assert plan.next_chunk("fast") == 1
    assert plan.next_chunk("fast") == 2
    assert plan.complete(1, "fast") and plan.complete(2, "fast")
    assert plan.next_chunk("fast") is None  # chunk 0 is in flight, but fast does not have it
    plan.peer_has("fast", [0])
    assert plan.next_chunk("fast") == 0  # nothing unassigned: duplicate the slow peer's chunk
    assert plan.next_chunk("fast") is None  # at most two copies, never twice to one peer
    assert plan.complete(0, "fast")
    assert not plan.complete(0, "slow")  # the late copy is discarded
    assert plan.finished and plan.assigned("slow") == set()


def test_no_duplicate_while_unassigned_chunks_remain_elsewhere():
    plan = sequential(3)
    plan.add_peer("a", have={0})
    plan.add_peer("b", have={0, 1})
    assert plan.next_chunk("a") == 0
    assert plan.next_chunk("b") == 1
    # Chunk 2 is unassigned (no one has it yet): b must not duplicate a's chunk 0 meanwhile.
    assert plan.next_chunk("b") is None


def test_resume_skips_chunks_already_done():
    plan = ChunkPlan(4, done={0, 2})
    plan.add_peer("a")
    assert {plan.next_chunk("a"), plan.next_chunk("a")} == {1, 3}
    assert plan.next_chunk("a") is None
    assert plan.done_count == 2


def test_swarm_of_partial_holders_spreads_requests_over_rare_chunks():
    """Four leechers' plans each see the others' announcements: rarest-first makes the set of
    chunks in flight diverse instead of everyone fetching the same ones."""
    plan = ChunkPlan(32, random_first=0, rng=random.Random(1))
    holders = {f"p{k}": set(range(k, 32, 4)) for k in range(4)}
    for peer, have in holders.items():
        plan.add_peer(peer, have=have)
    plan.peer_has("p0", [1, 2, 3])  # chunks 1-3 are now held twice, the rest once
    picks = [plan.next_chunk(peer) for peer in holders for _ in range(4)]
    assert None not in picks and len(set(picks)) == 16
    assert not {1, 2, 3} & set(picks)  # the commoner chunks wait


@given(
    st.integers(1, 30),
    st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["ok", "fail", "drop", "have"])), max_size=200),
    st.integers(0, 2**32),
)
def test_any_schedule_finishes_while_a_peer_remains(num_chunks, steps, seed):
    rng = random.Random(seed)
    plan = ChunkPlan(num_chunks, rng=rng)
    plan.add_peer("a")
    plan.add_peer("b", have=rng.sample(range(num_chunks), rng.randint(0, num_chunks)))
    plan.add_peer("c", have=(), origin=True)
    for peer, outcome in steps:
        if peer not in plan.peers:
            continue
        if outcome == "have":
            plan.peer_has(peer, [rng.randrange(num_chunks)])
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
    for other in plan.peers:  # the last holder of every chunk must get everything
        plan.remove_peer(other)
    plan.add_peer("survivor")
    for _ in range(4 * num_chunks):
        index = plan.next_chunk("survivor")
        if index is None:
            break
        plan.complete(index, "survivor")
    assert plan.finished


def test_availability_counts_stay_exact_through_joins_and_leaves():
    plan = ChunkPlan(10)
    plan.add_peer("full")
    plan.add_peer("half", have=range(5))
    plan.peer_has("half", [5, 5, 6])
    assert Counter(plan.availability(i) for i in range(10)) == {2: 7, 1: 3}
    plan.add_peer("half", have=[9])  # joins again: its old set is forgotten
    assert [plan.availability(i) for i in range(10)] == [1] * 9 + [2]
    plan.remove_peer("full")
    plan.remove_peer("half")
    assert [plan.availability(i) for i in range(10)] == [0] * 10


def test_a_completed_or_failed_chunk_is_no_longer_assigned_anywhere():
    plan = sequential(3)
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
    plan = sequential(1)
    for peer in ("a", "b"):
        plan.add_peer(peer)
    assert plan.next_chunk("a") == 0 and plan.next_chunk("b") == 0
    assert plan.complete(0, "a")
    plan.fail(0, "b")
    assert plan.finished and plan.assigned("b") == set() and plan.remove_peer("b") == []


def test_releasing_a_chunk_another_peer_still_fetches_does_not_queue_it_twice():
    plan = sequential(1)
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
    plan = sequential(2)
    assert plan.assigned("stranger") == set()
    assert plan.remove_peer("stranger") == []
    assert plan.next_chunk("stranger") is None


def test_a_failed_chunk_waits_for_a_holder_that_has_not_failed_it():
    plan = sequential(2)
    plan.add_peer("a")
    plan.add_peer("partial", have={1})  # cannot serve chunk 0
    assert plan.next_chunk("a") == 0
    plan.fail(0, "a")
    # The only other peer does not hold chunk 0, so a may retry it.
    assert plan.next_chunk("a") == 0


def test_endgame_copies_respect_have_sets_and_earlier_failures():
    plan = sequential(2)
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


def test_the_rarest_chunk_wins_even_when_a_commoner_one_comes_first_in_rank():
    """With a full peer the plan scans its unassigned chunks in rank order and may stop early,
    but only at a chunk no other chunk can be rarer than."""
    plan = sequential(3)
    plan.add_peer("full")
    plan.add_peer("partial", have={0})  # chunk 0, first in rank, is held twice; 1 and 2 once
    assert plan.next_chunk("full") == 1
    plan.add_peer("other", have={1, 2})
    assert plan.next_chunk("full") == 0  # 0 and 2 now tie at two holders: rank decides
    plan.remove_peer("partial")
    plan.remove_peer("other")
    assert [plan.availability(i) for i in range(3)] == [1, 1, 1]


def test_an_origin_leaving_does_not_count_as_a_partial_holder_leaving():
    plan = sequential(2)
    plan.add_peer("origin-a", origin=True)
    plan.add_peer("origin-b", origin=True)
    plan.remove_peer("origin-a")
    assert plan.next_chunk("origin-b") == 0  # no phantom partial holder keeps the origin off chunk 0
    plan.add_peer("leecher", have={1})
    plan.remove_peer("leecher")
    assert plan.next_chunk("origin-b") == 1


def test_holds_and_taken_elsewhere():
    plan = sequential(3)
    plan.add_peer("full")
    plan.add_peer("partial", have={1})
    assert plan.holds("full", 2) and plan.holds("partial", 1) and not plan.holds("partial", 2)
    assert not plan.holds("stranger", 0)
    index = plan.next_chunk("partial")
    assert plan.taken_elsewhere(index, "full") and not plan.taken_elsewhere(index, "partial")
    plan.complete(index, "partial")
    assert plan.taken_elsewhere(index, "partial")  # verified: taken for everyone
    assert not plan.taken_elsewhere(0, "full")


def test_exactly_the_first_picks_ignore_rarity():
    plan = sequential(4)
    plan.random_first = 2
    plan.add_peer("full")
    plan.add_peer("r", have={0, 1})  # 0 and 1 are held twice, 2 and 3 once
    assert [plan.next_chunk("full"), plan.next_chunk("full")] == [0, 1]  # the first two by rank only
    assert plan.next_chunk("full") == 2  # then by rarity (2 and 3 tie; rank)


def test_missing_held_counts_unverified_chunks_some_connected_peer_announced():
    plan = ChunkPlan(6, done=[0])
    assert plan.missing_held() == 0  # no peer: nothing we lack is held
    plan.add_peer("a", [0, 1, 2])
    plan.add_peer("b", [2, 3])
    assert plan.missing_held() == 3  # 1, 2, 3 (0 is verified)
    plan.complete(plan.next_chunk("b"), "b")
    assert plan.missing_held() == 2
    plan.remove_peer("a")
    plan.remove_peer("b")
    assert plan.missing_held() == 0


def test_prioritized_chunks_go_first_in_their_order_to_any_peer_that_holds_them():
    plan = sequential(8)
    plan.add_peer("origin", origin=True)
    plan.add_peer("partial", have={1, 5, 6})
    plan.prioritize([6, 99, -1, 3, 5])  # out of range: ignored
    assert plan.urgent == [6, 3, 5]
    assert plan.next_chunk("partial") == 6  # before 1, first in rank
    assert plan.next_chunk("partial") == 5  # 3 is not its to give
    assert plan.next_chunk("origin") == 3
    # Urgent, so an origin serves it though a partial holder has it; rarity and rank do not count.
    plan.add_peer("late", have={1, 7})
    plan.prioritize([7, 1])
    assert plan.next_chunk("origin") == 7
    assert plan.next_chunk("origin") == 1
    assert plan.next_chunk("partial") is None  # 1 is in flight already: not handed out again


def test_prioritize_replaces_the_list_and_forgets_chunks_as_they_are_done():
    plan = sequential(6, done={4})
    plan.add_peer("a")
    plan.prioritize([4, 5, 3])
    assert plan.urgent == [5, 3]  # 4 is verified already
    assert plan.next_chunk("a") == 5 and plan.complete(5, "a")
    assert plan.urgent == [3]
    plan.prioritize([2])  # the reader moved on: 3 is no longer urgent
    assert plan.next_chunk("a") == 2
    assert plan.next_chunk("a") == 0  # then the usual order


def test_a_prioritized_chunk_is_not_retried_on_the_peer_that_failed_it_while_another_may_serve_it():
    plan = sequential(4)
    plan.add_peer("a")
    plan.add_peer("b")
    plan.prioritize([2])
    assert plan.next_chunk("a") == 2
    plan.fail(2, "a")
    assert plan.next_chunk("a") == 0
    assert plan.next_chunk("b") == 2


def test_set_have_replaces_what_a_peer_holds_and_keeps_what_was_asked_of_it():
    plan = ChunkPlan(6, random_first=0, rng=random.Random(1))
    plan.add_peer("origin", (), origin=True)
    plan.prioritize([2])
    assert plan.next_chunk("origin") == 2  # urgent, and an origin holds every chunk
    plan.set_have("origin", None)  # its have-set: everything
    assert plan.assigned("origin") == {2} and plan.availability(4) == 1
    plan.set_have("origin", {4})  # a super-seeding origin's offers
    assert plan.availability(4) == 1 and plan.availability(0) == 0
    assert plan.next_chunk("origin") == 4
