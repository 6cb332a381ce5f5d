"""Super-seeding: each downloader is offered a few chunks no one else was offered; room for one
more as each is sent or found elsewhere; the least spread chunks again once all are out."""

import random

from hypothesis import given
from hypothesis import strategies as st

from p2p_shared.offers import OfferBook


def test_offers_to_different_downloaders_are_disjoint_until_every_chunk_is_out():
    book = OfferBook(32, window=4, rng=random.Random(1))
    offers = [set(book.join(conn, 0.0)) for conn in "abcdefgh"]
    assert all(len(o) == 4 for o in offers)
    assert len(set().union(*offers)) == 32  # 8 x 4: every chunk offered exactly once


def test_sending_a_chunk_makes_room_for_one_new_offer():
    book = OfferBook(10, window=2, rng=random.Random(2))
    first = book.join("a", 0.0)
    more = book.sent("a", first[0], 0.0)
    assert len(more) == 1 and more[0] not in first
    assert book.offered("a") == {first[1], more[0]}


def test_a_chunk_got_elsewhere_is_withdrawn_and_replaced():
    book = OfferBook(10, window=2, rng=random.Random(3))
    first = book.join("a", 0.0)
    replacement = book.holds("a", [first[0]], 0.0)
    assert len(replacement) == 1 and first[0] not in book.offered("a")
    # Once someone holds it, it is no longer offered as fresh to others.
    seen = set()
    for conn in "bcdefgh":
        seen |= set(book.join(conn, 0.0))
    assert first[0] not in seen


def test_downloaders_are_not_offered_what_they_hold():
    book = OfferBook(6, window=6, rng=random.Random(4))
    assert set(book.join("a", 0.0, [0, 1, 2])) == {3, 4, 5}


def test_offers_not_taken_go_to_the_next_downloader():
    book = OfferBook(4, window=4, rng=random.Random(5))
    untaken = set(book.join("a", 0.0))
    book.leave("a")
    assert set(book.join("b", 0.0)) == untaken


def test_second_pass_offers_only_what_no_connected_downloader_holds():
    book = OfferBook(4, window=2, rng=random.Random(6))
    a = book.join("a", 0.0)
    b = book.join("b", 0.0)
    for index in a:
        book.sent("a", index, 0.0)
    for index in b:
        book.sent("b", index, 0.0)
    assert book.holds("c", [], 0.0) == []  # unknown downloader: ignored
    # Every chunk is held by a connected downloader: c gets them from a and b, not from us.
    assert book.join("c", 0.0) == []
    book.leave("a")  # a leaves before passing its chunks on: now only we can send them
    assert set(book.holds("c", b, 0.0)) == set(a)


@given(st.integers(1, 40), st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**32))
def test_downloaders_that_share_all_complete(num_chunks, window, downloaders, seed):
    """Downloaders copy from each other what another holds (and say so), and take from us only
    what no other holds, as leechers do: however the turns fall, nobody is left waiting."""
    rng = random.Random(seed)
    book = OfferBook(num_chunks, window=window, rng=rng)
    holds = {d: set() for d in range(downloaders)}
    for d in holds:
        book.join(d, 0.0)
    # Turns at random: enough of them that every downloader surely gets its share of turns
    # (with 8 per chunk and downloader, one of five went without a turn once in ~10^4 seeds).
    for _ in range(num_chunks * downloaders * 60):
        if all(len(h) == num_chunks for h in holds.values()):
            break
        d = rng.choice(list(holds))
        elsewhere = set().union(*(h for o, h in holds.items() if o != d)) - holds[d]
        if elsewhere:
            index = rng.choice(sorted(elsewhere))
            holds[d].add(index)
            book.holds(d, [index], 0.0)
        elif offered := book.offered(d):
            index = rng.choice(sorted(offered))
            holds[d].add(index)
            book.sent(d, index, 0.0)
    assert all(len(h) == num_chunks for h in holds.values())


def test_a_declined_offer_is_replaced_and_not_offered_to_that_downloader_again():
    book = OfferBook(3, window=1, rng=random.Random(8))
    [first] = book.join("a", 0.0)
    [second] = book.decline("a", [first, 99], 0.0)  # fetched from another origin; 99: out of range, ignored
    assert second != first and book.offered("a") == {second}
    book.sent("a", second, 0.0)
    [third] = book.offered("a")
    assert third not in (first, second)
    book.sent("a", third, 0.0)
    # Every chunk is out: the declined one is not offered again to the one that declined it...
    assert book.offered("a") == set()
    # ...but to another downloader, since no connected downloader holds it.
    assert book.join("b", 0.0) == [first]


def test_offers_to_a_downloader_that_takes_nothing_go_stale_and_are_offered_elsewhere():
    book = OfferBook(2, window=1, rng=random.Random(9), patience=10.0)
    [hoarded] = book.join("hoarder", 0.0)
    [other] = book.join("b", 0.0)
    book.sent("b", other, 1.0)
    assert book.offered("b") == set()  # the rest is on offer to a downloader still in time
    assert book.top_up_all(5.0) == {}
    assert book.top_up_all(11.0) == {"b": [hoarded]}  # the hoarder took nothing for 11 s


def test_a_downloader_starved_for_patience_seconds_may_have_chunks_others_hold():
    book = OfferBook(2, window=2, rng=random.Random(10), patience=10.0)
    for index in book.join("a", 0.0):
        book.sent("a", index, 0.0)  # a holds both chunks and does not pass them on
    assert book.join("b", 1.0) == []  # b should get them from a...
    assert book.top_up_all(5.0) == {}
    assert sorted(book.top_up_all(12.0)["b"]) == [0, 1]  # ...but after 10 s without a chunk, from us


class FixedStart(random.Random):
    """An rng whose first randrange (the walk's start) is `start`."""

    def __init__(self, start: int) -> None:
        super().__init__(0)
        self.start = start

    def randrange(self, *args):
        return self.start


def test_a_walk_that_meets_a_chunk_someone_holds_goes_on_from_the_middle_of_the_longest_free_stretch():
    book = OfferBook(100, window=4, rng=FixedStart(0), order_key=b"file")
    order = list(book._fresh)  # the shared order, from our start
    # Another origin's downloader holds the 6th chunk of our walk: another origin works here.
    assert book.join("z", 0.0, holds=[order[5]]) == order[:4]
    # The next downloader gets the 5th, then the walk meets the held one and jumps to the middle
    # of the longest stretch nobody holds (order[6:], 94 chunks): order[6 + 47] on.
    assert book.join("a", 0.0) == [order[4], order[53], order[54], order[55]]


def test_when_the_last_downloader_leaves_the_next_swarm_gets_a_new_walk_of_the_shared_order():
    book = OfferBook(16, window=4, rng=random.Random(7), order_key=b"file")
    order = list(book._fresh)
    while offers := book.offered("a") if book.joined("a") else book.join("a", 0.0):
        for index in offers:
            book.sent("a", index, 0.0)  # a first swarm takes every chunk
    book.leave("a")
    # The next swarm walks the shared order again, from a new random start, so origins that
    # cannot see each other keep handing out different stretches (not random picks).
    again = book.join("d", 1.0)
    start = order.index(again[0])
    assert again == [order[(start + k) % 16] for k in range(4)]


def test_a_chunk_no_downloader_has_is_claimed_once_the_second_asker_is_sent_elsewhere():
    book = OfferBook(8, window=2, rng=random.Random(9))
    a_offers = set(book.join("a", 0.0))
    b_offers = set(book.join("b", 0.0))
    wanted = next(i for i in range(8) if i not in a_offers | b_offers)
    assert book.claim("a", wanted)  # nobody has it, nobody was offered it: a may have it now
    assert not book.claim("b", wanted)  # a has it: b gets it from a
    assert all(book.claim("b", i) for i in b_offers)  # what it was offered, it may always have
    assert wanted not in set(book.join("c", 0.0))  # out of the walk: never offered afresh


def test_a_chunk_offered_to_a_downloader_that_declined_it_may_still_be_asked_for():
    book = OfferBook(4, window=1, rng=random.Random(10))
    [offered] = book.join("a", 0.0)
    book.decline("a", [offered], 0.0)
    assert book.claim("a", offered)


def test_a_chunk_on_offer_to_another_is_not_claimed():
    book = OfferBook(4, window=1, rng=random.Random(11))
    [to_a] = book.join("a", 0.0)
    book.join("b", 0.0)
    assert not book.claim("b", to_a)
