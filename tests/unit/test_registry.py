"""The registry stores on a fake clock: time is a number passed in. Every test runs on the
memory store and on the Redis store (a real redis-server), through the one RegistryStore interface."""

import random

import pytest

from p2p_shared.messages import FileEntry
from p2p_shared import registry as registry_module
from p2p_shared.registry import HolderRegistry, NotRegistrant, RegistryFull

from .work import crowded, python_calls


def entry(n: int, name: str = "f") -> FileEntry:
    return FileEntry(file_id=f"{n:064x}", name=name, size=1, chunk_size=1)


async def resolve(reg, **key) -> FileEntry | None:
    return (await reg.lookup(**key, limit=0)).entry


async def holders(reg, file_id: str, limit: int, exclude=None) -> tuple[list, list]:
    found = await reg.lookup(file_id=file_id, limit=limit, exclude=exclude)
    return found.complete, found.partial


async def files(reg, after=None, limit=None) -> list:
    return (await reg.list_files(after=after, limit=limit))[0]


async def test_holders_expire_after_missed_heartbeats(make_store):
    reg = await make_store(ttl=90)
    await reg.register(("a", 1), [entry(1)], now=0)
    await reg.register(("b", 1), [entry(1)], now=10)
    assert await reg.heartbeat(("a", 1), now=60)
    assert await reg.expire(now=95) == []  # a last seen 60, b at 10: b is 85 old
    assert await reg.expire(now=100.5) == [("b", 1)]
    assert await holders(reg, entry(1).file_id, 10) == ([("a", 1)], [])
    assert await reg.expire(now=151) == [("a", 1)]
    assert (await reg.refresh_stats()).holders == 0 and (await reg.refresh_stats()).files == 0 and await resolve(reg, name="f") is None


async def test_heartbeat_from_unknown_holder_is_refused(make_store):
    reg = await make_store(ttl=10)
    assert not await reg.heartbeat(("a", 1), now=0)


async def test_register_is_new_then_refreshed_and_adds_files(make_store):
    reg = await make_store(ttl=10)
    assert await reg.register(("a", 1), [entry(1)], now=0) == "new"
    assert await reg.register(("a", 1), [entry(2, "g")], now=1) == "refreshed"
    assert (await resolve(reg, name="g")).file_id == entry(2).file_id
    assert (await reg.refresh_stats()).files == 2


async def test_unregister_removes_holder_from_every_index(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1), entry(2, "g")], now=0)
    await reg.register(("b", 1), [entry(1)], now=0)
    assert await reg.unregister(("a", 1))
    assert not await reg.unregister(("a", 1))
    assert await resolve(reg, name="g") is None
    assert await holders(reg, entry(1).file_id, 10) == ([("b", 1)], [])
    assert [(e.name, c, p) for e, c, p in await files(reg, )] == [("f", 1, 0)]


async def test_name_resolves_to_the_most_seeded_file(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1, "same")], now=0)
    await reg.register(("b", 1), [entry(2, "same")], now=0)
    await reg.register(("c", 1), [entry(2, "same")], now=0)
    assert (await resolve(reg, name="same")).file_id == entry(2).file_id
    assert (await resolve(reg, file_id=entry(1).file_id)).file_id == entry(1).file_id


async def test_holders_are_capped_and_shuffled(make_store):
    reg = await make_store(ttl=10)
    for port in range(1, 101):
        await reg.register(("h", port), [entry(1)], now=0)
    picks = [tuple((await holders(reg, entry(1).file_id, 10))[0]) for seed in range(5)]
    assert all(len(p) == 10 and len(set(p)) == 10 for p in picks)
    assert len(set(picks)) > 1


async def test_caps(make_store):
    reg = await make_store(ttl=10, max_holders=2, max_files_per_holder=2)
    await reg.register(("a", 1), [entry(1), entry(2)], now=0)
    await reg.register(("b", 1), [], now=0)
    with pytest.raises(RegistryFull):
        await reg.register(("c", 1), [], now=0)
    with pytest.raises(RegistryFull):
        await reg.register(("a", 1), [entry(3)], now=0)
    assert await reg.register(("a", 1), [entry(1)], now=1) == "refreshed"  # already held: no new room needed


async def test_a_file_whose_seeders_all_expired_is_counted_until_seeded_again(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1), entry(2, "g")], now=0)
    await reg.register(("b", 1), [entry(1)], now=5)
    await reg.expire(now=11)  # a expires: file 1 still has b, file g has nobody
    assert (await reg.refresh_stats()).lost_files == 1
    await reg.expire(now=16)  # b expires too
    assert (await reg.refresh_stats()).lost_files == 2 and (await reg.refresh_stats()).files == 0
    await reg.register(("c", 1), [entry(2, "g")], now=20)
    assert (await reg.refresh_stats()).lost_files == 1


async def test_a_file_left_on_purpose_is_not_lost(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1)], now=0)
    await reg.unregister(("a", 1))
    await reg.expire(now=100)
    assert (await reg.refresh_stats()).lost_files == 0


async def test_lost_files_are_forgotten_after_a_day(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1)], now=0)
    await reg.register(("b", 1), [entry(2)], now=3600)
    await reg.expire(now=20)
    await reg.expire(now=3620)
    assert (await reg.refresh_stats()).lost_files == 2
    await reg.expire(now=20 + 24 * 3600 + 1)
    assert (await reg.refresh_stats()).lost_files == 1


async def test_lost_files_are_capped_oldest_forgotten_first(make_store, monkeypatch):
    monkeypatch.setattr(registry_module, "MAX_LOST_FILES", 2)
    reg = await make_store(ttl=10)
    for n in range(3):
        await reg.register(("a", n), [entry(n)], now=n)
    for n in range(3):
        await reg.expire(now=11 + n)
    assert (await reg.refresh_stats()).lost_files == 2
    await reg.register(("b", 1), [entry(0)], now=20)  # the oldest was forgotten: nothing to take back
    assert (await reg.refresh_stats()).lost_files == 2
    await reg.register(("b", 1), [entry(2)], now=21)
    assert (await reg.refresh_stats()).lost_files == 1


async def test_reregistering_known_files_still_adds_the_new_ones(make_store):
    reg = await make_store(ttl=90)
    await reg.register(("a", 1), [entry(1)], now=0)
    await reg.register(("a", 1), [entry(1), entry(2, "g")], now=1)
    assert await resolve(reg, name="g") == entry(2, "g")
    assert await holders(reg, entry(2).file_id, 10) == ([("a", 1)], [])


async def test_a_seeder_seen_exactly_a_ttl_ago_is_kept(make_store):
    reg = await make_store(ttl=90)
    await reg.register(("a", 1), [entry(1)], now=10)
    assert await reg.expire(now=100) == []
    assert await reg.expire(now=100.001) == [("a", 1)]


async def test_holders_stay_consistent_through_removals_from_the_middle(make_store):
    reg = await make_store(ttl=90)
    seeders = [("s", n) for n in range(4)]
    for key in seeders:
        await reg.register(key, [entry(1)], now=0)
    await reg.unregister(seeders[0])  # the last holder moves into its slot
    await reg.unregister(seeders[3])  # then the moved one leaves too
    assert sorted((await holders(reg, entry(1).file_id, 10))[0]) == seeders[1:3]
    await reg.unregister(seeders[1])
    await reg.unregister(seeders[2])
    assert (await reg.refresh_stats()).files == 0 and await resolve(reg, name="f") is None


async def test_a_name_keeps_its_other_file_when_one_of_two_goes(make_store):
    reg = await make_store(ttl=90)
    await reg.register(("a", 1), [entry(1)], now=0)
    await reg.register(("b", 1), [entry(2)], now=0)  # the same name "f", another file
    await reg.unregister(("a", 1))
    assert await resolve(reg, name="f") == entry(2)
    await reg.unregister(("b", 1))
    assert await resolve(reg, name="f") is None


async def test_the_most_seeded_file_wins_a_name_even_with_the_smaller_id(make_store):
    reg = await make_store(ttl=90)
    await reg.register(("a", 1), [entry(1)], now=0)
    await reg.register(("b", 1), [entry(1)], now=0)
    await reg.register(("c", 1), [entry(9)], now=0)
    assert await resolve(reg, name="f") == entry(1)


async def test_files_are_listed_in_file_id_order_a_page_after_a_cursor(make_store):
    reg = await make_store(ttl=90)
    await reg.register(("a", 1), [entry(3, "c-name"), entry(1, "b-name"), entry(2, "a-name")], now=0)
    await reg.register(("b", 1), [entry(3, "c-name")], now=0)
    assert [(e.name, n) for e, n, _ in await files(reg, )] == [("b-name", 1), ("a-name", 1), ("c-name", 2)]
    assert [e.name for e, _, _ in await files(reg, after=entry(1).file_id, limit=1)] == ["a-name"]
    assert await files(reg, after=entry(3).file_id) == [] and await files(reg, after="0" * 64, limit=0) == []
    await reg.unregister(("a", 1))  # a file that leaves leaves the order too
    assert [e.name for e, _, _ in await files(reg, )] == ["c-name"]


async def test_a_seeder_registers_at_most_1024_files_by_default(make_store):
    reg = await make_store(ttl=90)
    await reg.register(("a", 1), [entry(n) for n in range(1024)], now=0)
    with pytest.raises(RegistryFull):
        await reg.register(("a", 1), [entry(1024)], now=0)


async def kinds(reg) -> dict[str, int]:
    stats = await reg.refresh_stats()
    return {"complete": stats.complete, "partial": stats.partial}


async def test_partial_holders_are_kept_apart_from_complete_ones(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("seeder", 1), [entry(1)], now=0)
    assert await reg.register(("leecher", 1), [entry(1)], now=0, partial=True) == "new"
    assert await holders(reg, entry(1).file_id, 10) == ([("seeder", 1)], [("leecher", 1)])
    assert [(e.name, c, p) for e, c, p in await files(reg, )] == [("f", 1, 1)]
    assert await kinds(reg) == {"complete": 1, "partial": 1} and (await reg.refresh_stats()).holders == 2


async def test_registering_complete_again_makes_a_partial_holder_complete_and_back(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("l", 1), [entry(1), entry(2, "g")], now=0, partial=True)
    assert await kinds(reg) == {"complete": 0, "partial": 1}
    assert await reg.register(("l", 1), [entry(1)], now=1) == "refreshed"
    assert await holders(reg, entry(1).file_id, 10) == ([("l", 1)], [])
    assert await holders(reg, entry(2).file_id, 10) == ([], [("l", 1)])
    assert await kinds(reg) == {"complete": 1, "partial": 1}  # complete for f, partial for g: once in each
    await reg.register(("l", 1), [entry(2, "g")], now=2)
    assert await kinds(reg) == {"complete": 1, "partial": 0}
    await reg.register(("l", 1), [entry(1)], now=3, partial=True)  # each registration says how it holds them
    assert await holders(reg, entry(1).file_id, 10) == ([], [("l", 1)])
    assert await kinds(reg) == {"complete": 1, "partial": 1}
    await reg.unregister(("l", 1))
    assert await kinds(reg) == {"complete": 0, "partial": 0} and (await reg.refresh_stats()).files == 0


async def test_a_holder_without_files_is_neither_kind(make_store):
    # A per-host peer with an empty cache is a holder, not a seeder: it must not hide the alert
    # about a swarm with no seeder left.
    reg = await make_store(ttl=10)
    await reg.register(("s", 1), [], now=0)
    assert await kinds(reg) == {"complete": 0, "partial": 0}
    await reg.register(("s", 1), [entry(2)], now=0)
    assert await kinds(reg) == {"complete": 1, "partial": 0}
    await reg.drop(("s", 1), [entry(2).file_id], now=0)
    assert await kinds(reg) == {"complete": 0, "partial": 0}
    await reg.register(("s", 1), [entry(1)], now=0, partial=True)
    assert await kinds(reg) == {"complete": 0, "partial": 1}


async def test_the_asker_is_never_among_the_holders_and_answers_stay_bounded(make_store):
    reg = await make_store(ttl=10)
    for port in range(1, 12):
        await reg.register(("h", port), [entry(1)], now=0)
        await reg.register(("p", port), [entry(1)], now=0, partial=True)
    for seed in range(50):
        for asker in (("h", 5), ("p", 5)):
            complete, partial = await holders(reg, entry(1).file_id, 10, exclude=asker)
            assert len(complete) == len(set(complete)) == 10 and len(partial) == len(set(partial)) == 10
            assert asker not in complete and asker not in partial
    complete, partial = await holders(reg, entry(1).file_id, 100, exclude=("h", 5))
    assert len(complete) == 10 and ("h", 5) not in complete and len(partial) == 11  # all the others


async def test_partial_holders_expire_like_any_holder_and_leave_nothing_lost(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("l", 1), [entry(1)], now=0, partial=True)
    await reg.register(("l", 2), [entry(1)], now=5, partial=True)
    assert await reg.heartbeat(("l", 1), now=8)
    assert await reg.expire(now=16) == [("l", 2)]
    assert await holders(reg, entry(1).file_id, 10) == ([], [("l", 1)])
    assert await reg.expire(now=19) == [("l", 1)]
    assert (await reg.refresh_stats()).holders == 0 and (await reg.refresh_stats()).files == 0 and await resolve(reg, name="f") is None
    assert await kinds(reg) == {"complete": 0, "partial": 0}
    assert (await reg.refresh_stats()).lost_files == 0  # no complete holder went silent


async def test_a_file_is_lost_when_its_last_complete_holder_expires_even_with_partial_holders_left(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("s", 1), [entry(1)], now=0)
    await reg.register(("l", 1), [entry(1)], now=5, partial=True)
    await reg.expire(now=11)
    assert (await reg.refresh_stats()).lost_files == 1 and (await reg.refresh_stats()).files == 1
    await reg.register(("l", 1), [entry(1)], now=12, partial=True)  # still in part: still lost
    assert (await reg.refresh_stats()).lost_files == 1
    await reg.register(("l", 1), [entry(1)], now=13)  # the leecher finished: a whole copy again
    assert (await reg.refresh_stats()).lost_files == 0


async def test_name_resolves_to_the_file_with_most_complete_holders_then_partial(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1, "same")], now=0)
    for port in range(3):
        await reg.register(("l", port), [entry(2, "same")], now=0, partial=True)
    assert (await resolve(reg, name="same")).file_id == entry(1).file_id
    await reg.register(("b", 1), [entry(3, "same")], now=0)
    await reg.register(("l", 9), [entry(3, "same")], now=0, partial=True)
    assert (await resolve(reg, name="same")).file_id == entry(3).file_id


async def test_partial_files_count_against_the_caps(make_store):
    reg = await make_store(ttl=10, max_holders=1, max_files_per_holder=1)
    await reg.register(("l", 1), [entry(1)], now=0, partial=True)
    with pytest.raises(RegistryFull):
        await reg.register(("l", 1), [entry(2)], now=0, partial=True)
    with pytest.raises(RegistryFull):
        await reg.register(("l", 2), [], now=0, partial=True)
    assert await kinds(reg) == {"complete": 0, "partial": 1}


# Issue 12, items 14-18: holders belong to their sender, shares are bounded, names stay findable.

SEEDER, NEIGHBOUR = ("10.0.0.1", 40000), ("10.0.0.1", 40001)  # two sockets of one address


async def test_only_the_address_that_registered_a_holder_keeps_or_drops_it(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("10.0.0.1", 7000), [entry(1)], now=0, sender=SEEDER)
    stranger = ("10.6.6.6", SEEDER[1])  # another address, even from the same port
    with pytest.raises(NotRegistrant):
        await reg.heartbeat(("10.0.0.1", 7000), now=5, sender=stranger)
    with pytest.raises(NotRegistrant):
        await reg.unregister(("10.0.0.1", 7000), sender=stranger)
    with pytest.raises(NotRegistrant):
        await reg.register(("10.0.0.1", 7000), [entry(2)], now=5, sender=stranger)
    assert await reg.expire(now=10.5) == [("10.0.0.1", 7000)]  # forged beats kept nothing alive
    # Another socket of the same address (the seeder restarted) takes its holder over at once.
    await reg.register(("10.0.0.1", 7000), [entry(1)], now=11, sender=SEEDER)
    assert await reg.register(("10.0.0.1", 7000), [entry(1)], now=12, sender=NEIGHBOUR) == "refreshed"
    assert await reg.heartbeat(("10.0.0.1", 7000), now=13, sender=NEIGHBOUR)
    # A member proven by the swarm secret may act on any holder, and takes it over.
    assert await reg.heartbeat(("10.0.0.1", 7000), now=13, sender=("10.9.9.9", 1), member=True)
    assert await reg.unregister(("10.0.0.1", 7000), sender=("10.9.9.9", 1), member=True)


async def test_one_address_has_a_bounded_share_and_each_refusal_says_which_cap(make_store):
    reg = await make_store(ttl=10, max_holders=4, max_files_per_holder=3, max_files=7,
                         max_holders_per_address=2, max_files_per_address=5)
    a, b, c = ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)
    await reg.register(("10.0.0.1", 7000), [entry(1), entry(2), entry(3)], now=0, sender=a)
    with pytest.raises(RegistryFull) as full:
        await reg.register(("10.0.0.1", 7000), [entry(4)], now=0, sender=a)
    assert full.value.reason == "files_per_holder"
    await reg.register(("10.0.0.1", 7001), [entry(4), entry(5)], now=0, sender=a)
    with pytest.raises(RegistryFull) as full:
        await reg.register(("10.0.0.1", 7001), [entry(6)], now=0, sender=a)
    assert full.value.reason == "files_per_address"
    with pytest.raises(RegistryFull) as full:
        await reg.register(("10.0.0.1", 7002), [], now=0, sender=a)
    assert full.value.reason == "holders_per_address"
    await reg.register(("10.0.0.2", 7000), [entry(1), entry(7)], now=0, sender=b)
    with pytest.raises(RegistryFull) as full:
        await reg.register(("10.0.0.3", 7000), [entry(1)], now=0, sender=c)
    assert full.value.reason == "files"  # 7 registrations in all
    await reg.register(("10.0.0.3", 7000), [], now=0, sender=c)
    with pytest.raises(RegistryFull) as full:
        await reg.register(("10.0.0.4", 7000), [], now=0, sender=("10.0.0.4", 1))
    assert full.value.reason == "holders"
    await reg.unregister(("10.0.0.1", 7001), sender=a)  # leaving gives the share back
    await reg.register(("10.0.0.1", 7002), [entry(6), entry(8)], now=1, sender=a)
    assert (await reg.refresh_stats()).holdings == 7 and (await reg.refresh_stats()).holders == 4


async def test_a_file_id_registered_under_a_decoy_name_first_is_still_found_by_its_real_name(make_store):
    real = FileEntry(file_id="ab" * 32, name="real.bin", size=1000, chunk_size=100)
    decoy = FileEntry(file_id="ab" * 32, name="decoy.bin", size=1, chunk_size=1)
    reg = await make_store(ttl=10)
    await reg.register(("squatter", 1), [decoy], now=0)
    await reg.register(("seeder", 1), [real], now=0)
    await reg.register(("seeder", 2), [real], now=0)
    assert await resolve(reg, name="real.bin") == real
    assert await resolve(reg, name="decoy.bin") == decoy
    assert await resolve(reg, file_id=real.file_id) == real  # the entry most holders registered
    assert [row[0] for row in await files(reg, )] == [real]
    await reg.unregister(("squatter", 1))
    assert await resolve(reg, name="decoy.bin") is None and await resolve(reg, name="real.bin") == real


async def test_names_per_file_id_are_a_bounded_set_first_come_kept_while_held(make_store):
    reg = await make_store(ttl=10)
    fid = "cd" * 32
    for n in range(registry_module.MAX_NAMES_PER_FILE + 3):
        await reg.register(("h", n), [FileEntry(file_id=fid, name=f"name-{n}", size=1, chunk_size=1)], now=0)
    found = [n for n in range(registry_module.MAX_NAMES_PER_FILE + 3) if await resolve(reg, name=f"name-{n}")]
    assert found == list(range(registry_module.MAX_NAMES_PER_FILE))
    assert sorted((await holders(reg, fid, 100))[0]) == [("h", n) for n in range(11)]  # all hold it
    await reg.unregister(("h", 0))  # a name whose holders left frees its place for the next registration
    await reg.register(("h", 9), [FileEntry(file_id=fid, name="name-9", size=1, chunk_size=1)], now=1)
    assert await resolve(reg, name="name-0") is None and await resolve(reg, name="name-9") is not None


async def test_the_name_lookup_always_prefers_the_file_with_the_most_holders(make_store):
    rng = random.Random(12)
    reg = await make_store(ttl=1000, max_holders_per_address=None, max_files_per_address=None)
    ids = [entry(n, "same") for n in range(6)]
    held: dict[tuple, tuple[int, bool]] = {}
    for step in range(3000):
        key = ("h", rng.randrange(40))
        if key in held and rng.random() < 0.3:
            await reg.unregister(key)
            del held[key]
        else:
            n, partial = rng.randrange(6), rng.random() < 0.3
            if key in held:
                await reg.unregister(key)
            await reg.register(key, [ids[n]], now=step, partial=partial)
            held[key] = (n, partial)
        counts = {n: (sum(v == (n, False) for v in held.values()), sum(v == (n, True) for v in held.values())) for n in range(6)}
        live = [n for n in range(6) if counts[n] != (0, 0)]
        best = min(live, key=lambda n: (-counts[n][0], -counts[n][1], ids[n].file_id)) if live else None
        assert await resolve(reg, name="same") == (None if best is None else ids[best])


# The memory store's own structures: work counted in Python calls.

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


# Several replicas on one Redis: one registry, one set of caps, one replay memory.


async def test_replicas_share_holders_and_the_caps_hold_across_them(redis_stores):
    a = await redis_stores(ttl=10, max_holders=3, max_holders_per_address=2)
    b = await redis_stores(ttl=10, max_holders=3, max_holders_per_address=2)
    await a.register(("10.0.0.1", 7000), [entry(1)], now=0, sender=("10.0.0.1", 1))
    await b.register(("10.0.0.1", 7001), [entry(1)], now=0, sender=("10.0.0.1", 2))
    with pytest.raises(RegistryFull) as full:
        await a.register(("10.0.0.1", 7002), [], now=0, sender=("10.0.0.1", 3))
    assert full.value.reason == "holders_per_address"  # two holders of that address, one on each replica
    await a.register(("10.0.0.2", 7000), [], now=0, sender=("10.0.0.2", 1))
    with pytest.raises(RegistryFull) as full:
        await b.register(("10.0.0.3", 7000), [], now=0, sender=("10.0.0.3", 1))
    assert full.value.reason == "holders"
    assert sorted((await holders(b, entry(1).file_id, 10))[0]) == [("10.0.0.1", 7000), ("10.0.0.1", 7001)]
    with pytest.raises(NotRegistrant):  # ownership is the registry's, not the replica's
        await b.heartbeat(("10.0.0.1", 7000), now=1, sender=("10.6.6.6", 1))
    assert await b.heartbeat(("10.0.0.1", 7000), now=5, sender=("10.0.0.1", 9))
    assert await a.expire(now=10.5) == [("10.0.0.1", 7001), ("10.0.0.2", 7000)]  # beaten on b, expired by a
    assert await b.expire(now=10.5) == []
    assert (await b.refresh_stats()).holders == 1


async def test_replicas_agree_on_a_shared_key_and_refuse_a_nonce_seen_by_another(redis_stores):
    a, b = await redis_stores(ttl=10), await redis_stores(ttl=10)
    assert await a.shared_key("ids", b"first") == b"first"
    assert await b.shared_key("ids", b"second") == b"first"
    assert await a.remember_nonces([b"n1"], 30.0) == [True]
    assert await b.remember_nonces([b"n2", b"n1", b"n2"], 30.0) == [True, False, False]  # replays, to either replica
    ttl_ms = await a.client.pttl("p2p:nonce:" + b"n1".hex())
    assert 29_000 < ttl_ms <= 30_000  # remembered as long as its datagram could be accepted, then gone


async def test_an_expiry_of_many_holders_goes_in_batches(redis_stores):
    from p2p_tracker import redis_store

    reg = await redis_stores(ttl=10, max_holders_per_address=None, max_files_per_address=None)
    for port in range(1, 2 * redis_store.EXPIRE_BATCH + 6):
        await reg.register(("h", port), [entry(port % 3)], now=0)
    assert len(await reg.expire(now=11)) == 2 * redis_store.EXPIRE_BATCH + 5
    assert await reg.refresh_stats() == type(await reg.refresh_stats())(lost_files=3)


async def test_several_calls_run_at_once_each_outcome_in_its_place(make_store):
    from operator import methodcaller

    reg = await make_store(ttl=10, max_files_per_holder=1)
    outcomes = await reg.run([
        methodcaller("register", ("a", 1), [entry(1)], 0),
        methodcaller("register", ("a", 1), [entry(2)], 0),  # a second file: refused
        methodcaller("heartbeat", ("a", 1), 1),
        methodcaller("heartbeat", ("b", 1), 1),
        methodcaller("lookup", file_id=entry(1).file_id),
        methodcaller("list_files"),
    ])
    assert outcomes[0] == "new" and isinstance(outcomes[1], RegistryFull) and outcomes[1].reason == "files_per_holder"
    assert outcomes[2:4] == [True, False]
    assert outcomes[4].entry == entry(1) and outcomes[4].complete == [("a", 1)]
    assert outcomes[5] == ([(entry(1), 1, 0)], 1)


# Dropping files: a holder (a per-host peer evicting one from its cache) keeps its other files.


async def stats(reg) -> dict[str, int]:
    s = await reg.refresh_stats()
    return {"holders": s.holders, "holdings": s.holdings, "complete": s.complete, "partial": s.partial, "files": s.files}


async def test_a_dropped_file_leaves_the_holder_and_its_other_files_stay(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1), entry(2, "g")], now=0)
    await reg.register(("b", 1), [entry(1)], now=0)
    assert await reg.drop(("a", 1), [entry(1).file_id], now=1)
    assert await holders(reg, entry(1).file_id, 10) == ([("b", 1)], [])
    assert await holders(reg, entry(2).file_id, 10) == ([("a", 1)], [])
    assert await resolve(reg, name="g") == entry(2, "g") and await resolve(reg, name="f") == entry(1)
    assert [(e.name, c, p) for e, c, p in await files(reg)] == [("f", 1, 0), ("g", 1, 0)]
    assert await stats(reg) == {"holders": 2, "holdings": 2, "complete": 2, "partial": 0, "files": 2}


async def test_dropping_a_files_last_holding_removes_the_file_not_the_holder(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1), entry(2, "g")], now=0)
    assert await reg.drop(("a", 1), [entry(2).file_id, entry(1).file_id], now=1)
    assert await resolve(reg, name="f") is None and await resolve(reg, name="g") is None
    assert await resolve(reg, file_id=entry(1).file_id) is None and await files(reg) == []
    assert await holders(reg, entry(1).file_id, 10) == ([], [])
    # Still a holder, of no file: of neither kind, as one that registered none.
    assert await stats(reg) == {"holders": 1, "holdings": 0, "complete": 0, "partial": 0, "files": 0}
    assert await reg.heartbeat(("a", 1), now=2)
    assert await reg.register(("a", 1), [entry(2, "g")], now=3) == "refreshed"  # and may hold it again
    assert await resolve(reg, name="g") == entry(2, "g")
    assert await stats(reg) == {"holders": 1, "holdings": 1, "complete": 1, "partial": 0, "files": 1}


async def test_dropping_counts_each_kind_of_holding(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("l", 1), [entry(1)], now=0)
    await reg.register(("l", 1), [entry(2, "g"), entry(3, "h")], now=0, partial=True)
    await reg.register(("s", 1), [entry(2, "g")], now=0)
    assert await stats(reg) == {"holders": 2, "holdings": 4, "complete": 2, "partial": 1, "files": 3}
    await reg.drop(("l", 1), [entry(2).file_id], now=1)  # one partial holding of two
    assert await holders(reg, entry(2).file_id, 10) == ([("s", 1)], [])
    assert await stats(reg) == {"holders": 2, "holdings": 3, "complete": 2, "partial": 1, "files": 3}
    await reg.drop(("l", 1), [entry(3).file_id], now=1)  # its last partial one
    assert await stats(reg) == {"holders": 2, "holdings": 2, "complete": 2, "partial": 0, "files": 2}
    await reg.drop(("l", 1), [entry(1).file_id], now=1)  # its last complete one: a holder of nothing
    assert await stats(reg) == {"holders": 2, "holdings": 1, "complete": 1, "partial": 0, "files": 1}
    await reg.register(("p", 1), [entry(4)], now=1, partial=True)
    await reg.drop(("p", 1), [entry(4).file_id], now=2)  # partial only, then nothing: neither kind
    assert await stats(reg) == {"holders": 3, "holdings": 1, "complete": 1, "partial": 0, "files": 1}
    await reg.unregister(("l", 1))  # leaving after a drop gives back only what is left
    await reg.unregister(("p", 1))
    assert await stats(reg) == {"holders": 1, "holdings": 1, "complete": 1, "partial": 0, "files": 1}


async def test_a_name_follows_the_drops_of_its_files_holders(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1, "same")], now=0)
    await reg.register(("b", 1), [entry(1, "same")], now=0)
    await reg.register(("c", 1), [entry(2, "same")], now=0)
    assert await resolve(reg, name="same") == entry(1, "same")
    await reg.drop(("a", 1), [entry(1).file_id], now=1)  # 1 and 1: the smaller id still wins
    assert await resolve(reg, name="same") == entry(1, "same")
    await reg.drop(("b", 1), [entry(1).file_id], now=1)
    assert await resolve(reg, name="same") == entry(2, "same")
    await reg.register(("a", 1), [entry(1, "same")], now=2, partial=True)  # partial only: 2 still wins
    assert await resolve(reg, name="same") == entry(2, "same")
    await reg.drop(("c", 1), [entry(2).file_id], now=3)
    assert await resolve(reg, name="same") == entry(1, "same")
    await reg.drop(("a", 1), [entry(1).file_id], now=3)
    assert await resolve(reg, name="same") is None


async def test_a_dropped_decoy_name_goes_and_the_real_one_stays(make_store):
    real = FileEntry(file_id="ab" * 32, name="real.bin", size=1000, chunk_size=100)
    decoy = FileEntry(file_id="ab" * 32, name="decoy.bin", size=1, chunk_size=1)
    reg = await make_store(ttl=10)
    await reg.register(("squatter", 1), [decoy], now=0)
    await reg.register(("seeder", 1), [real], now=0)
    await reg.drop(("squatter", 1), [real.file_id], now=1)
    assert await resolve(reg, name="decoy.bin") is None and await resolve(reg, name="real.bin") == real
    assert await resolve(reg, file_id=real.file_id) == real and [row[0] for row in await files(reg)] == [real]
    await reg.drop(("seeder", 1), [real.file_id], now=1)
    assert await resolve(reg, name="real.bin") is None and await files(reg) == []


async def test_a_drop_gives_back_the_addresss_share(make_store):
    reg = await make_store(ttl=10, max_files_per_address=2, max_files=3)
    a = ("10.0.0.1", 1)
    await reg.register(("10.0.0.1", 7000), [entry(1), entry(2)], now=0, sender=a)
    with pytest.raises(RegistryFull) as full:
        await reg.register(("10.0.0.1", 7001), [entry(3)], now=0, sender=a)
    assert full.value.reason == "files_per_address"
    await reg.drop(("10.0.0.1", 7000), [entry(2).file_id], now=1, sender=a)
    await reg.register(("10.0.0.1", 7001), [entry(3)], now=1, sender=a)  # the room the drop left
    await reg.register(("10.0.0.2", 7000), [entry(4)], now=1, sender=("10.0.0.2", 1))
    with pytest.raises(RegistryFull) as full:
        await reg.register(("10.0.0.2", 7000), [entry(5)], now=1, sender=("10.0.0.2", 1))
    assert full.value.reason == "files"  # 3 registrations in all
    await reg.drop(("10.0.0.2", 7000), [entry(4).file_id], now=2, sender=("10.0.0.2", 1))
    await reg.register(("10.0.0.2", 7000), [entry(5)], now=2, sender=("10.0.0.2", 1))
    assert (await stats(reg))["holdings"] == 3
    # Both of a's holders leave: its share, counted down by the drop, is back to nothing.
    await reg.unregister(("10.0.0.1", 7000), sender=a)
    await reg.unregister(("10.0.0.1", 7001), sender=a)
    await reg.register(("10.0.0.1", 7002), [entry(6), entry(7)], now=3, sender=a)
    assert await stats(reg) == {"holders": 2, "holdings": 3, "complete": 2, "partial": 0, "files": 3}


async def test_only_the_registering_address_or_a_member_may_drop(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("10.0.0.1", 7000), [entry(1), entry(2)], now=0, sender=SEEDER)
    with pytest.raises(NotRegistrant):
        await reg.drop(("10.0.0.1", 7000), [entry(1).file_id], now=5, sender=("10.6.6.6", SEEDER[1]))
    assert await holders(reg, entry(1).file_id, 10) == ([("10.0.0.1", 7000)], [])  # nothing dropped
    assert await reg.expire(now=10.5) == [("10.0.0.1", 7000)]  # and the refused drop kept nothing alive
    await reg.register(("10.0.0.1", 7000), [entry(1), entry(2)], now=11, sender=SEEDER)
    assert await reg.drop(("10.0.0.1", 7000), [entry(1).file_id], now=12, sender=NEIGHBOUR)  # its address
    assert await reg.drop(("10.0.0.1", 7000), [entry(2).file_id], now=12, sender=("10.9.9.9", 1), member=True)
    assert await files(reg) == []
    with pytest.raises(NotRegistrant):  # a member's drop took nothing over: the owner is still SEEDER's address
        await reg.drop(("10.0.0.1", 7000), [], now=13, sender=("10.9.9.9", 1))


async def test_a_drop_from_an_unknown_holder_is_false_and_changes_nothing(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1)], now=0)
    assert not await reg.drop(("b", 1), [entry(1).file_id], now=1)
    assert not await reg.drop(("b", 1), [entry(1).file_id], now=1, sender=("b", 5), member=True)
    assert await holders(reg, entry(1).file_id, 10) == ([("a", 1)], [])
    assert await reg.expire(now=11) == [("a", 1)]
    assert not await reg.drop(("a", 1), [entry(1).file_id], now=12)  # expired: unknown again
    assert await stats(reg) == {"holders": 0, "holdings": 0, "complete": 0, "partial": 0, "files": 0}


async def test_dropping_what_the_holder_does_not_hold_is_a_no_op(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1), entry(2, "g")], now=0)
    await reg.register(("b", 1), [entry(3, "h")], now=0)
    before = await stats(reg)
    assert await reg.drop(("a", 1), [entry(3).file_id, entry(9).file_id], now=1)  # b's file, and nobody's
    assert await stats(reg) == before and await holders(reg, entry(3).file_id, 10) == ([("b", 1)], [])
    assert await reg.drop(("a", 1), [entry(1).file_id, entry(1).file_id], now=2)  # a repeated id counts once
    after = await stats(reg)
    assert after == {**before, "holdings": before["holdings"] - 1, "files": before["files"] - 1}
    assert await reg.drop(("a", 1), [entry(1).file_id], now=3)  # again (a retried datagram): still known, no change
    assert await stats(reg) == after
    assert [(e.name, c) for e, c, _ in await files(reg)] == [("g", 1), ("h", 1)]


async def test_a_dropped_file_is_not_lost(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1), entry(2, "g")], now=0)
    await reg.register(("l", 1), [entry(1)], now=0, partial=True)
    await reg.drop(("a", 1), [entry(1).file_id, entry(2).file_id], now=1)  # its last complete holder, on purpose
    await reg.expire(now=20)  # and then everybody expires
    assert (await reg.refresh_stats()).lost_files == 0
    await reg.register(("a", 1), [entry(1)], now=30)
    await reg.register(("b", 1), [entry(1)], now=30)
    await reg.drop(("b", 1), [entry(1).file_id], now=31)
    assert await reg.expire(now=40.5) == [("a", 1)]  # a goes silent: file 1 lost, b's drop aside
    assert (await reg.refresh_stats()).lost_files == 1


async def test_a_drop_counts_as_contact(make_store):
    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1), entry(2)], now=0)
    await reg.register(("b", 1), [entry(1)], now=5)
    assert await reg.drop(("a", 1), [entry(2).file_id], now=8)
    assert await reg.expire(now=15.5) == [("b", 1)]  # a, heard from at 8 by its drop, is not stale yet
    assert await reg.expire(now=18.5) == [("a", 1)]


async def test_drops_run_with_other_calls_each_outcome_in_its_place(make_store):
    from operator import methodcaller

    reg = await make_store(ttl=10)
    await reg.register(("a", 1), [entry(1), entry(2)], now=0, sender=("a", 9))
    outcomes = await reg.run([
        methodcaller("drop", ("a", 1), [entry(1).file_id], 1, sender=("a", 9)),
        methodcaller("drop", ("b", 1), [entry(1).file_id], 1),
        methodcaller("drop", ("a", 1), [entry(2).file_id], 1, sender=("x", 9)),
        methodcaller("lookup", file_id=entry(2).file_id),
    ])
    assert outcomes[:2] == [True, False] and isinstance(outcomes[2], NotRegistrant)
    assert outcomes[3].complete == [("a", 1)] and await files(reg) == [(entry(2), 1, 0)]


async def test_registers_drops_and_unregisters_in_any_order_keep_every_index_right(make_store):
    rng = random.Random(7)
    reg = await make_store(ttl=1000, max_holders_per_address=None, max_files_per_address=None)
    ids = [entry(n, "same" if n < 4 else f"own-{n}") for n in range(6)]
    held: dict[tuple, dict[int, bool]] = {}  # holder -> file -> held in part
    for step in range(400):
        key, action = ("h", rng.randrange(12)), rng.random()
        if action < 0.45:
            chosen, partial = rng.sample(range(6), rng.randrange(1, 4)), rng.random() < 0.3
            await reg.register(key, [ids[n] for n in chosen], now=step, partial=partial)
            held.setdefault(key, {}).update({n: partial for n in chosen})
        elif action < 0.9:
            chosen = [rng.randrange(7) for _ in range(rng.randrange(1, 4))]  # 6: nobody's file
            assert await reg.drop(key, [entry(n).file_id for n in chosen], now=step) == (key in held)
            for n in chosen:
                held.get(key, {}).pop(n, None)
        else:
            assert await reg.unregister(key) == (key in held)
            held.pop(key, None)
        holding = {n: ([k for k in held if held[k].get(n) is False], [k for k in held if held[k].get(n) is True]) for n in range(6)}
        live = [n for n in range(6) if holding[n] != ([], [])]
        assert await stats(reg) == {
            "holders": len(held),
            "holdings": sum(len(f) for f in held.values()),
            "complete": sum(False in f.values() for f in held.values()),
            "partial": sum(True in f.values() for f in held.values()),
            "files": len(live),
        }
        same = [n for n in live if n < 4]
        best = min(same, key=lambda n: (-len(holding[n][0]), -len(holding[n][1]), ids[n].file_id)) if same else None
        assert await resolve(reg, name="same") == (None if best is None else ids[best])
        assert [(e, c, p) for e, c, p in await files(reg)] == [(ids[n], *map(len, holding[n])) for n in live]
        n = rng.randrange(6)
        complete, partial = await holders(reg, ids[n].file_id, 100)
        assert (sorted(complete), sorted(partial)) == (sorted(holding[n][0]), sorted(holding[n][1]))


# -- leases (version 5 `claim`): one holder at a time fetches what many want ------------------

A, B = ("10.0.0.1", 7000), ("10.0.0.2", 7000)


async def test_the_first_claim_holds_a_lease_and_the_next_sees_who(make_store):
    store = await make_store(30.0, lease_ttl=10.0)
    assert await store.claim("sha256:aa", A, 0.0) == (A, 10.0)
    holder, left = await store.claim("sha256:aa", B, 4.0)
    assert holder == A and left == pytest.approx(6.0)
    assert await store.claim("sha256:bb", B, 4.0) == (B, 10.0)  # another key is another lease


async def test_a_holder_renews_its_lease_and_a_dead_holders_lease_is_taken_over(make_store):
    store = await make_store(30.0, lease_ttl=10.0)
    await store.claim("k", A, 0.0)
    assert await store.claim("k", A, 8.0) == (A, 10.0)  # renewed: until 18
    assert (await store.claim("k", B, 17.0))[0] == A
    assert await store.claim("k", B, 18.0) == (B, 10.0)  # ran out: the next claim takes it


async def test_a_released_lease_is_free_at_once_and_only_its_holder_releases_it(make_store):
    store = await make_store(30.0, lease_ttl=10.0)
    await store.claim("k", A, 0.0)
    holder, _ = await store.claim("k", B, 1.0, release=True)
    assert holder == A  # not B's to give back
    assert await store.claim("k", A, 1.0, release=True) == (None, 0.0)
    assert await store.claim("k", B, 1.0) == (B, 10.0)
    assert await store.claim("free", A, 1.0, release=True) == (None, 0.0)  # nothing to give back


async def test_replicas_on_one_redis_agree_on_a_lease(redis_stores):
    one, two = await redis_stores(30.0, lease_ttl=10.0), await redis_stores(30.0, lease_ttl=10.0)
    assert (await one.claim("k", A, 0.0))[0] == A
    assert (await two.claim("k", B, 0.5))[0] == A


def test_leases_are_capped_and_the_stale_ones_make_room():
    from p2p_shared.registry import Leases, RegistryFull

    leases = Leases(ttl=10.0, max_leases=2)
    leases.claim("a", A, 0.0)
    leases.claim("b", A, 5.0)
    with pytest.raises(RegistryFull, match="2 leases"):
        leases.claim("c", B, 9.0)
    assert leases.claim("c", B, 10.0) == (B, 10.0) and len(leases) == 2  # "a" ran out at 10
