"""The registry on a fake clock: time is a number passed in."""

import random

import pytest

from p2p_shared.messages import FileEntry
from p2p_shared import registry as registry_module
from p2p_shared.registry import HolderRegistry, NotRegistrant, RegistryFull

from .work import crowded, python_calls


def entry(n: int, name: str = "f") -> FileEntry:
    return FileEntry(file_id=f"{n:064x}", name=name, size=1, chunk_size=1)


def test_holders_expire_after_missed_heartbeats():
    reg = HolderRegistry(ttl=90)
    reg.register(("a", 1), [entry(1)], now=0)
    reg.register(("b", 1), [entry(1)], now=10)
    assert reg.heartbeat(("a", 1), now=60)
    assert reg.expire(now=95) == []  # a last seen 60, b at 10: b is 85 old
    assert reg.expire(now=100.5) == [("b", 1)]
    assert ("b", 1) not in reg and ("a", 1) in reg
    assert reg.expire(now=151) == [("a", 1)]
    assert len(reg) == 0 and reg.file_count == 0 and reg.resolve(name="f") is None


def test_heartbeat_from_unknown_holder_is_refused():
    reg = HolderRegistry(ttl=10)
    assert not reg.heartbeat(("a", 1), now=0)


def test_register_is_new_then_refreshed_and_adds_files():
    reg = HolderRegistry(ttl=10)
    assert reg.register(("a", 1), [entry(1)], now=0) == "new"
    assert reg.register(("a", 1), [entry(2, "g")], now=1) == "refreshed"
    assert reg.resolve(name="g").file_id == entry(2).file_id
    assert reg.file_count == 2


def test_unregister_removes_holder_from_every_index():
    reg = HolderRegistry(ttl=10)
    reg.register(("a", 1), [entry(1), entry(2, "g")], now=0)
    reg.register(("b", 1), [entry(1)], now=0)
    assert reg.unregister(("a", 1))
    assert not reg.unregister(("a", 1))
    assert reg.resolve(name="g") is None
    assert reg.holders(entry(1).file_id, 10, random.Random(0)) == ([("b", 1)], [])
    assert [(e.name, c, p) for e, c, p in reg.files()] == [("f", 1, 0)]


def test_name_resolves_to_the_most_seeded_file():
    reg = HolderRegistry(ttl=10)
    reg.register(("a", 1), [entry(1, "same")], now=0)
    reg.register(("b", 1), [entry(2, "same")], now=0)
    reg.register(("c", 1), [entry(2, "same")], now=0)
    assert reg.resolve(name="same").file_id == entry(2).file_id
    assert reg.resolve(file_id=entry(1).file_id).file_id == entry(1).file_id


def test_holders_are_capped_and_shuffled():
    reg = HolderRegistry(ttl=10)
    for port in range(1, 101):
        reg.register(("h", port), [entry(1)], now=0)
    picks = [tuple(reg.holders(entry(1).file_id, 10, random.Random(seed))[0]) for seed in range(5)]
    assert all(len(p) == 10 and len(set(p)) == 10 for p in picks)
    assert len(set(picks)) > 1


def test_caps():
    reg = HolderRegistry(ttl=10, max_holders=2, max_files_per_holder=2)
    reg.register(("a", 1), [entry(1), entry(2)], now=0)
    reg.register(("b", 1), [], now=0)
    with pytest.raises(RegistryFull):
        reg.register(("c", 1), [], now=0)
    with pytest.raises(RegistryFull):
        reg.register(("a", 1), [entry(3)], now=0)
    assert reg.register(("a", 1), [entry(1)], now=1) == "refreshed"  # already held: no new room needed


def test_a_file_whose_seeders_all_expired_is_counted_until_seeded_again():
    reg = HolderRegistry(ttl=10)
    reg.register(("a", 1), [entry(1), entry(2, "g")], now=0)
    reg.register(("b", 1), [entry(1)], now=5)
    reg.expire(now=11)  # a expires: file 1 still has b, file g has nobody
    assert reg.lost_file_count == 1
    reg.expire(now=16)  # b expires too
    assert reg.lost_file_count == 2 and reg.file_count == 0
    reg.register(("c", 1), [entry(2, "g")], now=20)
    assert reg.lost_file_count == 1


def test_a_file_left_on_purpose_is_not_lost():
    reg = HolderRegistry(ttl=10)
    reg.register(("a", 1), [entry(1)], now=0)
    reg.unregister(("a", 1))
    reg.expire(now=100)
    assert reg.lost_file_count == 0


def test_lost_files_are_forgotten_after_a_day():
    reg = HolderRegistry(ttl=10)
    reg.register(("a", 1), [entry(1)], now=0)
    reg.register(("b", 1), [entry(2)], now=3600)
    reg.expire(now=20)
    reg.expire(now=3620)
    assert reg.lost_file_count == 2
    reg.expire(now=20 + 24 * 3600 + 1)
    assert reg.lost_file_count == 1


def test_lost_files_are_capped_oldest_forgotten_first(monkeypatch):
    monkeypatch.setattr(registry_module, "MAX_LOST_FILES", 2)
    reg = HolderRegistry(ttl=10)
    for n in range(3):
        reg.register(("a", n), [entry(n)], now=n)
    for n in range(3):
        reg.expire(now=11 + n)
    assert reg.lost_file_count == 2
    reg.register(("b", 1), [entry(0)], now=20)  # the oldest was forgotten: nothing to take back
    assert reg.lost_file_count == 2
    reg.register(("b", 1), [entry(2)], now=21)
    assert reg.lost_file_count == 1


def test_reregistering_known_files_still_adds_the_new_ones():
    reg = HolderRegistry(ttl=90)
    reg.register(("a", 1), [entry(1)], now=0)
    reg.register(("a", 1), [entry(1), entry(2, "g")], now=1)
    assert reg.resolve(name="g") == entry(2, "g")
    assert reg.holders(entry(2).file_id, 10, random.Random(0)) == ([("a", 1)], [])


def test_a_seeder_seen_exactly_a_ttl_ago_is_kept():
    reg = HolderRegistry(ttl=90)
    reg.register(("a", 1), [entry(1)], now=10)
    assert reg.expire(now=100) == []
    assert reg.expire(now=100.001) == [("a", 1)]


def test_holders_stay_consistent_through_removals_from_the_middle():
    reg = HolderRegistry(ttl=90)
    seeders = [("s", n) for n in range(4)]
    for key in seeders:
        reg.register(key, [entry(1)], now=0)
    reg.unregister(seeders[0])  # the last holder moves into its slot
    reg.unregister(seeders[3])  # then the moved one leaves too
    assert sorted(reg.holders(entry(1).file_id, 10, random.Random(0))[0]) == seeders[1:3]
    reg.unregister(seeders[1])
    reg.unregister(seeders[2])
    assert reg.file_count == 0 and reg.resolve(name="f") is None


def test_a_name_keeps_its_other_file_when_one_of_two_goes():
    reg = HolderRegistry(ttl=90)
    reg.register(("a", 1), [entry(1)], now=0)
    reg.register(("b", 1), [entry(2)], now=0)  # the same name "f", another file
    reg.unregister(("a", 1))
    assert reg.resolve(name="f") == entry(2)
    reg.unregister(("b", 1))
    assert reg.resolve(name="f") is None


def test_the_most_seeded_file_wins_a_name_even_with_the_smaller_id():
    reg = HolderRegistry(ttl=90)
    reg.register(("a", 1), [entry(1)], now=0)
    reg.register(("b", 1), [entry(1)], now=0)
    reg.register(("c", 1), [entry(9)], now=0)
    assert reg.resolve(name="f") == entry(1)


def test_files_are_listed_in_file_id_order_a_page_after_a_cursor():
    reg = HolderRegistry(ttl=90)
    reg.register(("a", 1), [entry(3, "c-name"), entry(1, "b-name"), entry(2, "a-name")], now=0)
    reg.register(("b", 1), [entry(3, "c-name")], now=0)
    assert [(e.name, n) for e, n, _ in reg.files()] == [("b-name", 1), ("a-name", 1), ("c-name", 2)]
    assert [e.name for e, _, _ in reg.files(after=entry(1).file_id, limit=1)] == ["a-name"]
    assert reg.files(after=entry(3).file_id) == [] and reg.files(after="0" * 64, limit=0) == []
    reg.unregister(("a", 1))  # a file that leaves leaves the order too
    assert [e.name for e, _, _ in reg.files()] == ["c-name"]


def test_a_seeder_registers_at_most_1024_files_by_default():
    reg = HolderRegistry(ttl=90)
    reg.register(("a", 1), [entry(n) for n in range(1024)], now=0)
    with pytest.raises(RegistryFull):
        reg.register(("a", 1), [entry(1024)], now=0)


def kinds(reg) -> dict[str, int]:
    return {kind: reg.count(kind) for kind in ("complete", "partial")}


def test_partial_holders_are_kept_apart_from_complete_ones():
    reg = HolderRegistry(ttl=10)
    reg.register(("seeder", 1), [entry(1)], now=0)
    assert reg.register(("leecher", 1), [entry(1)], now=0, partial=True) == "new"
    assert reg.holders(entry(1).file_id, 10, random.Random(0)) == ([("seeder", 1)], [("leecher", 1)])
    assert [(e.name, c, p) for e, c, p in reg.files()] == [("f", 1, 1)]
    assert kinds(reg) == {"complete": 1, "partial": 1} and len(reg) == 2


def test_registering_complete_again_makes_a_partial_holder_complete_and_back():
    reg = HolderRegistry(ttl=10)
    reg.register(("l", 1), [entry(1), entry(2, "g")], now=0, partial=True)
    assert kinds(reg) == {"complete": 0, "partial": 1}
    assert reg.register(("l", 1), [entry(1)], now=1) == "refreshed"
    assert reg.holders(entry(1).file_id, 10, random.Random(0)) == ([("l", 1)], [])
    assert reg.holders(entry(2).file_id, 10, random.Random(0)) == ([], [("l", 1)])
    assert kinds(reg) == {"complete": 1, "partial": 1}  # complete for f, partial for g: once in each
    reg.register(("l", 1), [entry(2, "g")], now=2)
    assert kinds(reg) == {"complete": 1, "partial": 0}
    reg.register(("l", 1), [entry(1)], now=3, partial=True)  # each registration says how it holds them
    assert reg.holders(entry(1).file_id, 10, random.Random(0)) == ([], [("l", 1)])
    assert kinds(reg) == {"complete": 1, "partial": 1}
    reg.unregister(("l", 1))
    assert kinds(reg) == {"complete": 0, "partial": 0} and reg.file_count == 0


def test_a_holder_without_files_counts_as_complete():
    reg = HolderRegistry(ttl=10)
    reg.register(("s", 1), [], now=0)
    assert kinds(reg) == {"complete": 1, "partial": 0}
    reg.register(("s", 1), [entry(1)], now=0, partial=True)
    assert kinds(reg) == {"complete": 0, "partial": 1}


def test_the_asker_is_never_among_the_holders_and_answers_stay_bounded():
    reg = HolderRegistry(ttl=10)
    for port in range(1, 12):
        reg.register(("h", port), [entry(1)], now=0)
        reg.register(("p", port), [entry(1)], now=0, partial=True)
    for seed in range(50):
        for asker in (("h", 5), ("p", 5)):
            complete, partial = reg.holders(entry(1).file_id, 10, random.Random(seed), exclude=asker)
            assert len(complete) == len(set(complete)) == 10 and len(partial) == len(set(partial)) == 10
            assert asker not in complete and asker not in partial
    complete, partial = reg.holders(entry(1).file_id, 100, random.Random(0), exclude=("h", 5))
    assert len(complete) == 10 and ("h", 5) not in complete and len(partial) == 11  # all the others


def test_partial_holders_expire_like_any_holder_and_leave_nothing_lost():
    reg = HolderRegistry(ttl=10)
    reg.register(("l", 1), [entry(1)], now=0, partial=True)
    reg.register(("l", 2), [entry(1)], now=5, partial=True)
    assert reg.heartbeat(("l", 1), now=8)
    assert reg.expire(now=16) == [("l", 2)]
    assert reg.holders(entry(1).file_id, 10, random.Random(0)) == ([], [("l", 1)])
    assert reg.expire(now=19) == [("l", 1)]
    assert len(reg) == 0 and reg.file_count == 0 and reg.resolve(name="f") is None
    assert kinds(reg) == {"complete": 0, "partial": 0}
    assert reg.lost_file_count == 0  # no complete holder went silent


def test_a_file_is_lost_when_its_last_complete_holder_expires_even_with_partial_holders_left():
    reg = HolderRegistry(ttl=10)
    reg.register(("s", 1), [entry(1)], now=0)
    reg.register(("l", 1), [entry(1)], now=5, partial=True)
    reg.expire(now=11)
    assert reg.lost_file_count == 1 and reg.file_count == 1
    reg.register(("l", 1), [entry(1)], now=12, partial=True)  # still in part: still lost
    assert reg.lost_file_count == 1
    reg.register(("l", 1), [entry(1)], now=13)  # the leecher finished: a whole copy again
    assert reg.lost_file_count == 0


def test_name_resolves_to_the_file_with_most_complete_holders_then_partial():
    reg = HolderRegistry(ttl=10)
    reg.register(("a", 1), [entry(1, "same")], now=0)
    for port in range(3):
        reg.register(("l", port), [entry(2, "same")], now=0, partial=True)
    assert reg.resolve(name="same").file_id == entry(1).file_id
    reg.register(("b", 1), [entry(3, "same")], now=0)
    reg.register(("l", 9), [entry(3, "same")], now=0, partial=True)
    assert reg.resolve(name="same").file_id == entry(3).file_id


def test_partial_files_count_against_the_caps():
    reg = HolderRegistry(ttl=10, max_holders=1, max_files_per_holder=1)
    reg.register(("l", 1), [entry(1)], now=0, partial=True)
    with pytest.raises(RegistryFull):
        reg.register(("l", 1), [entry(2)], now=0, partial=True)
    with pytest.raises(RegistryFull):
        reg.register(("l", 2), [], now=0, partial=True)
    assert kinds(reg) == {"complete": 0, "partial": 1}


# Issue 12, items 14-18: holders belong to their sender, shares are bounded, names stay findable.

SEEDER, NEIGHBOUR = ("10.0.0.1", 40000), ("10.0.0.1", 40001)  # two sockets of one address


def test_only_the_address_that_registered_a_holder_keeps_or_drops_it():
    reg = HolderRegistry(ttl=10)
    reg.register(("10.0.0.1", 7000), [entry(1)], now=0, sender=SEEDER)
    stranger = ("10.6.6.6", SEEDER[1])  # another address, even from the same port
    with pytest.raises(NotRegistrant):
        reg.heartbeat(("10.0.0.1", 7000), now=5, sender=stranger)
    with pytest.raises(NotRegistrant):
        reg.unregister(("10.0.0.1", 7000), sender=stranger)
    with pytest.raises(NotRegistrant):
        reg.register(("10.0.0.1", 7000), [entry(2)], now=5, sender=stranger)
    assert reg.expire(now=10.5) == [("10.0.0.1", 7000)]  # forged beats kept nothing alive
    # Another socket of the same address (the seeder restarted) takes its holder over at once.
    reg.register(("10.0.0.1", 7000), [entry(1)], now=11, sender=SEEDER)
    assert reg.register(("10.0.0.1", 7000), [entry(1)], now=12, sender=NEIGHBOUR) == "refreshed"
    assert reg.heartbeat(("10.0.0.1", 7000), now=13, sender=NEIGHBOUR)
    # A member proven by the swarm secret may act on any holder, and takes it over.
    assert reg.heartbeat(("10.0.0.1", 7000), now=13, sender=("10.9.9.9", 1), member=True)
    assert reg.unregister(("10.0.0.1", 7000), sender=("10.9.9.9", 1), member=True)


def test_one_address_has_a_bounded_share_and_each_refusal_says_which_cap():
    reg = HolderRegistry(ttl=10, max_holders=4, max_files_per_holder=3, max_files=7,
                         max_holders_per_address=2, max_files_per_address=5)
    a, b, c = ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)
    reg.register(("10.0.0.1", 7000), [entry(1), entry(2), entry(3)], now=0, sender=a)
    with pytest.raises(RegistryFull) as full:
        reg.register(("10.0.0.1", 7000), [entry(4)], now=0, sender=a)
    assert full.value.reason == "files_per_holder"
    reg.register(("10.0.0.1", 7001), [entry(4), entry(5)], now=0, sender=a)
    with pytest.raises(RegistryFull) as full:
        reg.register(("10.0.0.1", 7001), [entry(6)], now=0, sender=a)
    assert full.value.reason == "files_per_address"
    with pytest.raises(RegistryFull) as full:
        reg.register(("10.0.0.1", 7002), [], now=0, sender=a)
    assert full.value.reason == "holders_per_address"
    reg.register(("10.0.0.2", 7000), [entry(1), entry(7)], now=0, sender=b)
    with pytest.raises(RegistryFull) as full:
        reg.register(("10.0.0.3", 7000), [entry(1)], now=0, sender=c)
    assert full.value.reason == "files"  # 7 registrations in all
    reg.register(("10.0.0.3", 7000), [], now=0, sender=c)
    with pytest.raises(RegistryFull) as full:
        reg.register(("10.0.0.4", 7000), [], now=0, sender=("10.0.0.4", 1))
    assert full.value.reason == "holders"
    reg.unregister(("10.0.0.1", 7001), sender=a)  # leaving gives the share back
    reg.register(("10.0.0.1", 7002), [entry(6), entry(8)], now=1, sender=a)
    assert reg.holding_count == 7 and len(reg) == 4


def test_a_file_id_registered_under_a_decoy_name_first_is_still_found_by_its_real_name():
    real = FileEntry(file_id="ab" * 32, name="real.bin", size=1000, chunk_size=100)
    decoy = FileEntry(file_id="ab" * 32, name="decoy.bin", size=1, chunk_size=1)
    reg = HolderRegistry(ttl=10)
    reg.register(("squatter", 1), [decoy], now=0)
    reg.register(("seeder", 1), [real], now=0)
    reg.register(("seeder", 2), [real], now=0)
    assert reg.resolve(name="real.bin") == real
    assert reg.resolve(name="decoy.bin") == decoy
    assert reg.resolve(file_id=real.file_id) == real  # the entry most holders registered
    assert [row[0] for row in reg.files()] == [real]
    reg.unregister(("squatter", 1))
    assert reg.resolve(name="decoy.bin") is None and reg.resolve(name="real.bin") == real


def test_names_per_file_id_are_a_bounded_set_first_come_kept_while_held():
    reg = HolderRegistry(ttl=10)
    fid = "cd" * 32
    for n in range(registry_module.MAX_NAMES_PER_FILE + 3):
        reg.register(("h", n), [FileEntry(file_id=fid, name=f"name-{n}", size=1, chunk_size=1)], now=0)
    found = [n for n in range(registry_module.MAX_NAMES_PER_FILE + 3) if reg.resolve(name=f"name-{n}")]
    assert found == list(range(registry_module.MAX_NAMES_PER_FILE))
    assert sorted(reg.holders(fid, 100, random.Random(0))[0]) == [("h", n) for n in range(11)]  # all hold it
    reg.unregister(("h", 0))  # a name whose holders left frees its place for the next registration
    reg.register(("h", 9), [FileEntry(file_id=fid, name="name-9", size=1, chunk_size=1)], now=1)
    assert reg.resolve(name="name-0") is None and reg.resolve(name="name-9") is not None


def test_the_name_lookup_always_prefers_the_file_with_the_most_holders():
    rng = random.Random(12)
    reg = HolderRegistry(ttl=1000, max_holders_per_address=None, max_files_per_address=None)
    ids = [entry(n, "same") for n in range(6)]
    held: dict[tuple, tuple[int, bool]] = {}
    for step in range(3000):
        key = ("h", rng.randrange(40))
        if key in held and rng.random() < 0.3:
            reg.unregister(key)
            del held[key]
        else:
            n, partial = rng.randrange(6), rng.random() < 0.3
            if key in held:
                reg.unregister(key)
            reg.register(key, [ids[n]], now=step, partial=partial)
            held[key] = (n, partial)
        counts = {n: (sum(v == (n, False) for v in held.values()), sum(v == (n, True) for v in held.values())) for n in range(6)}
        live = [n for n in range(6) if counts[n] != (0, 0)]
        best = min(live, key=lambda n: (-counts[n][0], -counts[n][1], ids[n].file_id)) if live else None
        assert reg.resolve(name="same") == (None if best is None else ids[best])


def test_a_name_lookup_does_work_independent_of_the_ids_under_the_name():
    small, big = crowded(20), crowded(20_000)
    assert small.resolve(name="crowded") == entry(19, "crowded") and big.resolve(name="crowded") == entry(19_999, "crowded")
    assert python_calls(lambda: big.resolve(name="crowded")) <= python_calls(lambda: small.resolve(name="crowded")) + 5
    # The best file losing and winning its second holder again and again costs no scan either.
    def churn(reg: HolderRegistry, ids: int) -> None:
        for _ in range(50):
            reg.unregister(("h", ids))
            reg.resolve(name="crowded")
            reg.register(("h", ids), [entry(ids - 1, "crowded")], now=0)
            reg.resolve(name="crowded")

    assert python_calls(lambda: churn(big, 20_000)) <= 2 * python_calls(lambda: churn(small, 20)) + 100


def test_a_page_of_the_file_list_does_work_independent_of_the_number_of_files():
    small, big = crowded(20), crowded(20_000)
    cursor = entry(10).file_id
    assert [e.file_id for e, _, _ in big.files(after=cursor, limit=16)] == [entry(n).file_id for n in range(11, 27)]
    assert python_calls(lambda: big.files(after=cursor, limit=16)) <= 2 * python_calls(lambda: small.files(after=cursor, limit=16)) + 50
