"""The registry on a fake clock: time is a number passed in."""

import random

import pytest

from p2p_shared.messages import FileEntry
from p2p_shared import registry as registry_module
from p2p_shared.registry import RegistryFull, HolderRegistry


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


def test_files_are_listed_most_seeded_first_then_by_name():
    reg = HolderRegistry(ttl=90)
    reg.register(("a", 1), [entry(1, "b-name"), entry(2, "a-name"), entry(3, "c-name")], now=0)
    reg.register(("b", 1), [entry(3, "c-name")], now=0)
    assert [(e.name, n) for e, n, _ in reg.files()] == [("c-name", 2), ("a-name", 1), ("b-name", 1)]


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
