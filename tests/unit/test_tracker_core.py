"""The tracker's handling, datagram in and answer out, on a fake clock with real metrics."""

import json
import random

import pytest
import structlog
from prometheus_client import CollectorRegistry

from p2p_shared import messages as m
from p2p_shared.limits import MAX_DATAGRAM
from p2p_tracker.core import TrackerCore
from p2p_tracker.metrics import TrackerMetrics
from p2p_tracker.shell import handle
from p2p_tracker.store import Limits, MemoryStore

from .work import crowded, python_calls

FID = "cd" * 32
ENTRY = m.FileEntry(file_id=FID, name="demo.bin", size=100, chunk_size=10)


class Tracker:
    """A core and its store, answering datagrams as the shell does; its metrics in `prom`.
    Every test runs on the memory store and on the Redis store (make_store)."""

    def __init__(self, store, interval: float = 1.0, max_peers: int = 50, **core_args) -> None:
        self.store = store
        self.prom = CollectorRegistry()
        self.core = TrackerCore(TrackerMetrics(self.prom, store), interval, max_peers, shared_nonces=store.shared, **core_args)
        self.ids = self.core.ids

    async def handle(self, data: bytes, source: tuple[str, int], now: float) -> bytes | None:
        return await handle(self.core, self.store, data, source, now)

    async def expire(self, now: float) -> None:
        self.core.expired(await self.store.expire(now))

    async def holders(self) -> int:
        return (await self.store.refresh_stats()).holders


@pytest.fixture
async def tracker(make_store):
    return Tracker(await make_store(ttl=3.0, max_holders=3, rng=random.Random(1)), max_peers=2)


async def ask(core, message, source=("10.0.0.1", 5555), now=0.0):
    """One request as a well-behaved client sends it: with a connection id for its address."""
    if isinstance(message, m.ProvenRequest) and message.conn is None:
        connected = m.decode(await core.handle(m.encode_request(m.Connect()), source, now))
        message = message.model_copy(update={"conn": connected.conn})
    answer = await core.handle(m.encode(message), source, now)
    return None if answer is None else m.decode(answer)


async def metric(core, name, **labels):
    await core.store.refresh_stats()  # the gauges show the registry's size as last read
    return core.prom.get_sample_value(name, labels) or 0.0


async def test_register_then_lookup_uses_the_source_address(tracker):
    reply = await ask(tracker, m.Register(txn=7, port=7000, files=[ENTRY]))
    assert reply == m.Ack(txn=7, interval=1.0)
    peers = await ask(tracker, m.Lookup(txn=8, name="demo.bin"), source=("10.9.9.9", 1))
    assert peers.txn == 8 and peers.file == ENTRY
    assert peers.peers == [("10.0.0.1", 7000)]
    assert await metric(tracker, "p2p_tracker_registrations_total", result="new") == 1
    assert await metric(tracker, "p2p_tracker_live_holders", kind="complete") == 1
    assert await metric(tracker, "p2p_tracker_live_holders", kind="partial") == 0
    assert await metric(tracker, "p2p_tracker_files") == 1


async def test_an_advertised_host_that_is_the_source_address_is_accepted(tracker):
    await ask(tracker, m.Register(port=7000, host="::ffff:10.0.0.1", files=[ENTRY]))  # (another host: see below)
    assert (await ask(tracker, m.Lookup(file_id=FID))).peers == [("::ffff:10.0.0.1", 7000)]


async def test_lookup_answers_are_capped(tracker):
    for i in range(3):
        await ask(tracker, m.Register(port=7000 + i, files=[ENTRY]))
    assert len((await ask(tracker, m.Lookup(file_id=FID))).peers) == 2


async def test_peer_list_is_trimmed_to_fit_a_datagram(make_store):
    core = Tracker(await make_store(ttl=3.0), interval=1.0, max_peers=50)
    seeders, registry = core.store, core.prom
    for i in range(50):  # long host names: only members may advertise those
        await seeders.register(("h" * 250 + f"{i:03}", 7000 + i), [ENTRY], 0.0, member=True)
    conn = core.ids.issue("10.0.0.1", 0.0)
    answer = await core.handle(m.encode(m.Lookup(conn=conn, file_id=FID)), ("10.0.0.1", 1), 0.0)
    assert len(answer) <= MAX_DATAGRAM
    assert 10 <= len(m.decode(answer).peers) < 50


async def test_unknown_file_gives_empty_answer(tracker):
    reply = await ask(tracker, m.Lookup(name="nothing"))
    assert reply.file is None and reply.peers == []
    assert await metric(tracker, "p2p_tracker_lookups_total", result="not_found") == 1


async def test_heartbeat_keeps_alive_and_expiry_forgets(tracker):
    await ask(tracker, m.Register(port=7000, files=[ENTRY]), now=0)
    assert (await ask(tracker, m.Heartbeat(port=7000), now=2.5)).type == "ack"
    await tracker.expire(5.0)
    assert await tracker.holders() == 1
    await tracker.expire(5.6)
    assert await tracker.holders() == 0
    assert await metric(tracker, "p2p_tracker_expirations_total") == 1
    reply = await ask(tracker, m.Heartbeat(txn=4, port=7000), now=6)
    assert reply == m.ErrorReply(txn=4, code="unknown_seeder", message="register again")
    assert await metric(tracker, "p2p_tracker_heartbeats_total", result="unknown") == 1


async def test_unregister_forgets_at_once(tracker):
    await ask(tracker, m.Register(port=7000, files=[ENTRY]))
    assert (await ask(tracker, m.Unregister(port=7000))).type == "ack"
    assert (await ask(tracker, m.Lookup(file_id=FID))).peers == []
    assert await metric(tracker, "p2p_tracker_unregistrations_total") == 1


async def test_list_files(tracker):
    await ask(tracker, m.Register(port=7000, files=[ENTRY]))
    await ask(tracker, m.Register(port=7001, files=[ENTRY]))
    reply = await ask(tracker, m.ListFiles())
    assert reply.total == 1 and reply.files[0].seeders == 2 and reply.files[0].name == "demo.bin"


async def test_full_registry_refuses_with_typed_error(tracker):
    for i in range(3):
        await ask(tracker, m.Register(port=7000 + i))
    reply = await ask(tracker, m.Register(port=8000))
    assert reply.type == "error" and reply.code == "full"
    assert await metric(tracker, "p2p_tracker_registrations_total", result="rejected") == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "invalid"), (b"\xff\xfe", "invalid"), (b'{"type":"x"}', "invalid"), (b"x" * 9000, "too_large")],
)
async def test_malformed_datagrams_are_dropped_and_counted(tracker, data, reason):
    assert await tracker.handle(data, ("10.0.0.1", 1), 0.0) is None
    assert await metric(tracker, "p2p_tracker_malformed_datagrams_total", reason=reason) == 1


async def test_answers_sent_to_the_tracker_are_not_reflected(tracker):
    assert await tracker.handle(m.encode(m.Ack(interval=1)), ("10.0.0.1", 1), 0.0) is None
    assert await metric(tracker, "p2p_tracker_malformed_datagrams_total", reason="unexpected") == 1


@pytest.mark.parametrize("version", [0, 6, 255])
async def test_other_protocol_version_gets_a_typed_error(tracker, version):
    request = b'{"v":%d,"txn":9,"type":"connect"}' % version
    answer = await tracker.handle(request.ljust(120), ("10.0.0.1", 1), 0.0)  # room for the whole answer
    assert answer == (
        b'{"v":5,"txn":9,"type":"error","code":"unsupported_version","message":"this tracker speaks versions 1, 2, 3, 4 and 5"}'
    )
    # As short an answer as the request leaves room for: without the text, or nothing.
    assert await tracker.handle(request.ljust(60), ("10.0.0.1", 1), 0.0) == (
        b'{"v":5,"txn":9,"type":"error","code":"unsupported_version"}'
    )
    assert await tracker.handle(request, ("10.0.0.1", 1), 0.0) is None
    assert await metric(tracker, "p2p_tracker_malformed_datagrams_total", reason="unsupported_version") == 3


async def test_a_flood_from_one_address_is_dropped_and_counted(make_store):
    from p2p_shared.ratelimit import AddressLimiter

    core = Tracker(await make_store(ttl=3.0), 1.0, 50, limiter=AddressLimiter(100, 10))
    seeders, registry = core.store, core.prom
    conn = core.ids.issue("10.6.6.6", 0.0)
    flood = [await core.handle(m.encode(m.Register(conn=conn, port=7000 + i)), ("10.6.6.6", 1), 0.0) for i in range(50)]
    assert sum(a is not None for a in flood) == 10 and await core.holders() == 10
    assert registry.get_sample_value("p2p_tracker_refused_datagrams_total", {"reason": "rate_limited"}) == 40
    assert await core.handle(m.encode_request(m.Connect()), ("10.0.0.2", 1), 0.0) is not None  # others still served


async def test_requests_without_a_connection_id_get_only_a_short_error(tracker):
    await ask(tracker, m.Register(port=7000, files=[ENTRY]))
    request = m.encode(m.Lookup(txn=5, file_id=FID))
    answer = await tracker.handle(request, ("10.9.9.9", 1), 0.0)
    assert m.decode(answer) == m.ErrorReply(txn=5, code="connect_first")
    assert len(answer) <= len(request)  # no amplification towards an address that did not ask
    assert await metric(tracker, "p2p_tracker_refused_datagrams_total", reason="unconnected") == 1
    # A spoofed registration (an id issued to another address) records nothing.
    stolen = m.decode(await tracker.handle(m.encode_request(m.Connect()), ("10.0.0.1", 1), 0.0)).conn
    spoofed = await tracker.handle(m.encode(m.Register(conn=stolen, port=9999)), ("10.7.7.7", 1), 0.0)
    assert m.decode(spoofed).code == "connect_first" and await tracker.holders() == 1


async def test_connection_ids_expire(tracker):
    conn = m.decode(await tracker.handle(m.encode_request(m.Connect()), ("10.0.0.1", 1), 0.0)).conn
    assert (await ask(tracker, m.ListFiles(conn=conn), now=100.0)).type == "files"
    assert (await ask(tracker, m.ListFiles(conn=conn), now=130.0)).code == "connect_first"


async def test_with_a_swarm_secret_only_sealed_datagrams_count(make_store):
    from p2p_shared.auth import Sealer

    core = Tracker(await make_store(ttl=3.0), 1.0, 50, sealer=Sealer(b"s" * 16))
    seeders, registry = core.store, core.prom
    member = Sealer(b"s" * 16)
    assert await core.handle(m.encode_request(m.Connect()), ("10.0.0.1", 1), 1000.0) is None  # unsigned: dropped
    assert await core.handle(Sealer(b"x" * 16).seal(m.encode_request(m.Connect()), 1000.0), ("10.0.0.1", 1), 1000.0) is None
    sealed = member.seal(m.encode_request(m.Connect(txn=3)), 1000.0)
    answer = await core.handle(sealed, ("10.0.0.1", 1), 1000.0)
    assert m.decode(member.open(answer, 1000.0)).type == "connected"
    assert await core.handle(sealed, ("10.0.0.1", 1), 1001.0) is None  # replayed
    assert registry.get_sample_value("p2p_tracker_refused_datagrams_total", {"reason": "unauthenticated"}) == 3


# Partial holders (protocol version 2) and version 1 clients, datagram bytes in and out.

LEECHER = ("10.0.0.7", 40000)  # a leecher's datagrams come from an ephemeral port; it serves on 7100


async def ask_raw(core, request: bytes, source=("10.0.0.1", 5555), now=0.0) -> dict:
    """A request as exact bytes (connection id added), the answer as parsed JSON with every key."""
    conn = json.loads(await core.handle(b'{"v":1,"type":"connect"}'.ljust(80), source, now))["conn"]
    return json.loads(await core.handle(request.replace(b"{", b'{"conn":%d,' % conn, 1), source, now))


async def test_version_1_client_gets_version_1_answers_with_complete_holders_only(tracker):
    await ask(tracker, m.Register(port=7000, files=[ENTRY]))
    await ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=LEECHER)
    connected = await tracker.handle(b'{"v":1,"txn":1,"type":"connect"}'.ljust(80), ("10.0.0.9", 1), 0.0)
    assert json.loads(connected).keys() == {"v", "txn", "type", "conn"} and json.loads(connected)["v"] == 1
    answer = await ask_raw(tracker, b'{"v":1,"txn":2,"type":"lookup","file_id":"%s"}' % FID.encode(), ("10.0.0.9", 1))
    assert answer == {"v": 1, "txn": 2, "type": "peers", "file": ENTRY.model_dump(), "peers": [["10.0.0.1", 7000]]}
    listed = await ask_raw(tracker, b'{"v":1,"txn":3,"type":"list_files"}', ("10.0.0.9", 1))
    assert listed == {"v": 1, "txn": 3, "type": "files", "files": [{**ENTRY.model_dump(), "seeders": 1}], "total": 1}


async def test_version_1_register_heartbeat_unregister(tracker):
    ack = await ask_raw(tracker, b'{"v":1,"txn":4,"type":"register","port":7000,"files":[%s]}' % ENTRY.model_dump_json().encode())
    assert ack == {"v": 1, "txn": 4, "type": "ack", "interval": 1.0}
    assert (await ask(tracker, m.Lookup(file_id=FID))).peers == [("10.0.0.1", 7000)]
    assert (await ask_raw(tracker, b'{"v":1,"txn":5,"type":"heartbeat","port":7000}', now=1.0))["type"] == "ack"
    assert (await ask_raw(tracker, b'{"v":1,"txn":6,"type":"unregister","port":7000}', now=1.0))["v"] == 1
    unknown = await ask_raw(tracker, b'{"v":1,"txn":7,"type":"heartbeat","port":7000}', now=1.0)
    assert unknown == {"v": 1, "txn": 7, "type": "error", "code": "unknown_seeder", "message": "register again"}


async def test_version_1_lookup_of_a_file_only_partial_holders_have_finds_nothing(tracker):
    await ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=LEECHER)
    answer = await ask_raw(tracker, b'{"v":1,"txn":8,"type":"lookup","name":"demo.bin"}')
    assert answer == {"v": 1, "txn": 8, "type": "peers", "peers": []}
    assert await metric(tracker, "p2p_tracker_lookups_total", result="not_found") == 1
    assert (await ask(tracker, m.Lookup(name="demo.bin"))).partial == [("10.0.0.7", 7100)]  # version 2 sees it


async def test_version_1_cannot_register_partial(tracker):
    request = b'{"v":1,"type":"register","port":7000,"partial":true}'
    assert await tracker.handle(request, ("10.0.0.1", 1), 0.0) is None
    assert await metric(tracker, "p2p_tracker_malformed_datagrams_total", reason="invalid") == 1


async def test_version_2_lookup_gets_both_kinds_bounded_and_never_the_asker(make_store):
    tracker = Tracker(await make_store(ttl=3.0, max_holders=6), max_peers=2)  # room for 3 seeders and 3 leechers
    for i in range(3):
        await ask(tracker, m.Register(port=7000 + i, files=[ENTRY]), source=(f"10.0.1.{i}", 1))
        await ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=(f"10.0.2.{i}", 1))
    answer = await ask_raw(tracker, b'{"v":2,"txn":9,"type":"lookup","file_id":"%s"}' % FID.encode(), ("10.9.9.9", 1))
    assert answer["v"] == 2 and answer["txn"] == 9 and answer["file"] == ENTRY.model_dump()
    assert len(answer["peers"]) == 2 and {h for h, _ in answer["peers"]} <= {"10.0.1.0", "10.0.1.1", "10.0.1.2"}
    assert len(answer["partial"]) == 2 and {h for h, _ in answer["partial"]} <= {"10.0.2.0", "10.0.2.1", "10.0.2.2"}
    for seed in range(20):  # the asker, a partial holder itself, never hears of itself
        tracker.store.rng = random.Random(seed)
        reply = await ask(tracker, m.Lookup(file_id=FID, port=7100), source=("10.0.2.1", 2))
        assert ("10.0.2.1", 7100) not in reply.partial and len(reply.partial) == 2 and len(reply.peers) == 2


async def test_the_asker_with_an_advertised_host_is_left_out(tracker):
    await tracker.store.register(("leecher-1", 7100), [ENTRY], 0.0, partial=True, member=True)
    await tracker.store.register(("leecher-2", 7100), [ENTRY], 0.0, partial=True, member=True)
    reply = await ask(tracker, m.Lookup(file_id=FID, port=7100, host="leecher-1"))
    assert reply.partial == [("leecher-2", 7100)] and reply.peers == []
    others = await ask(tracker, m.Lookup(file_id=FID, port=7100))  # from 10.0.0.1: neither of them
    assert sorted(others.partial) == [("leecher-1", 7100), ("leecher-2", 7100)]


async def test_a_partial_holder_that_finishes_registers_complete(tracker):
    await ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=LEECHER)
    assert await metric(tracker, "p2p_tracker_live_holders", kind="partial") == 1
    assert (await ask(tracker, m.ListFiles())).files[0].partial == 1
    await ask(tracker, m.Register(port=7100, files=[ENTRY]), source=LEECHER, now=0.5)
    reply = await ask(tracker, m.Lookup(file_id=FID))
    assert reply.peers == [("10.0.0.7", 7100)] and reply.partial == []
    assert await metric(tracker, "p2p_tracker_live_holders", kind="complete") == 1
    assert await metric(tracker, "p2p_tracker_live_holders", kind="partial") == 0
    [summary] = (await ask(tracker, m.ListFiles())).files
    assert (summary.seeders, summary.partial) == (1, 0)
    assert await metric(tracker, "p2p_tracker_registrations_total", result="refreshed") == 1


async def test_partial_holders_heartbeat_and_expire_like_seeders(tracker):
    await ask(tracker, m.Register(port=7000, files=[ENTRY]), now=0)
    await ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=LEECHER, now=0)
    assert (await ask(tracker, m.Heartbeat(port=7100), source=LEECHER, now=2.5)).type == "ack"
    await tracker.expire(3.5)  # the seeder's ttl is over, the leecher's is not
    assert await metric(tracker, "p2p_tracker_live_holders", kind="complete") == 0
    assert await metric(tracker, "p2p_tracker_live_holders", kind="partial") == 1
    assert (await ask(tracker, m.Lookup(file_id=FID), now=3.5)).partial == [("10.0.0.7", 7100)]
    assert await metric(tracker, "p2p_tracker_files_without_seeders") == 1  # no complete copy left
    await tracker.expire(6.0)
    assert await metric(tracker, "p2p_tracker_live_holders", kind="partial") == 0
    assert await metric(tracker, "p2p_tracker_expirations_total") == 2
    assert (await ask(tracker, m.Heartbeat(txn=2, port=7100), source=LEECHER, now=6.0)).code == "unknown_seeder"


async def test_a_holder_complete_for_one_file_and_partial_for_another_counts_once_per_kind(tracker):
    other = m.FileEntry(file_id="ef" * 32, name="other.bin", size=1, chunk_size=1)
    await ask(tracker, m.Register(port=7100, files=[ENTRY]), source=LEECHER)
    await ask(tracker, m.Register(port=7100, files=[other], partial=True), source=LEECHER)
    assert await metric(tracker, "p2p_tracker_live_holders", kind="complete") == 1
    assert await metric(tracker, "p2p_tracker_live_holders", kind="partial") == 1
    assert await metric(tracker, "p2p_tracker_files") == 2


async def test_both_peer_lists_are_trimmed_to_fit_a_datagram(make_store):
    core = Tracker(await make_store(ttl=3.0), interval=1.0, max_peers=50)
    holders, registry = core.store, core.prom
    for i in range(50):  # long host names: only members may advertise those
        await holders.register(("h" * 250 + f"{i:03}", 7000 + i), [ENTRY], 0.0, member=True)
        await holders.register(("p" * 250 + f"{i:03}", 7000 + i), [ENTRY], 0.0, partial=True, member=True)
    conn = core.ids.issue("10.0.0.1", 0.0)
    answer = await core.handle(m.encode(m.Lookup(conn=conn, file_id=FID)), ("10.0.0.1", 1), 0.0)
    assert len(answer) <= MAX_DATAGRAM
    reply = m.decode(answer)
    assert 5 <= len(reply.peers) < 50 and 5 <= len(reply.partial) < 50
    # A version 1 answer has only the complete holders to trim, so it keeps more of them.
    v1 = await core.handle(b'{"v":1,"conn":%d,"type":"lookup","file_id":"%s"}' % (conn, FID.encode()), ("10.0.0.1", 1), 0.0)
    assert len(v1) <= MAX_DATAGRAM and len(m.decode(v1).peers) > len(reply.peers)


# Issue 12, items 14-20, datagram in and answer out.

SECRET = b"s" * 16


async def sealed_core(make_store) -> Tracker:
    from p2p_shared.auth import Sealer

    return Tracker(await make_store(ttl=3.0), 1.0, 50, sealer=Sealer(SECRET))


async def ask_sealed(core, message, source=("10.0.0.1", 5555), now=1000.0):
    from p2p_shared.auth import Sealer

    member = Sealer(SECRET)
    connected = m.decode(member.open(await core.handle(member.seal(m.encode_request(m.Connect()), now), source, now), now))
    message = message.model_copy(update={"conn": connected.conn})
    return m.decode(member.open(await core.handle(member.seal(m.encode_request(message), now), source, now), now))


async def test_a_host_other_than_the_senders_address_needs_the_swarm_secret(tracker, make_store):
    for host in ("10.0.0.2", "127.0.0.1", "seeder-1"):
        reply = await ask(tracker, m.Register(txn=3, port=22, host=host, files=[ENTRY]))
        assert reply.type == "error" and reply.code == "forbidden" and reply.txn == 3
    assert await tracker.holders() == 0
    assert await metric(tracker, "p2p_tracker_refused_datagrams_total", reason="foreign_host") == 3
    assert (await ask(tracker, m.Register(port=7000, host="10.0.0.1", files=[ENTRY]))).type == "ack"  # its own address
    assert (await ask(tracker, m.Heartbeat(port=7000, host="10.0.0.9"))).code == "forbidden"
    assert (await ask(tracker, m.Unregister(port=7000, host="10.0.0.9"))).code == "forbidden"
    core = await sealed_core(make_store)  # a member proves itself with the secret: it may advertise any host
    assert (await ask_sealed(core, m.Register(port=7000, host="seeder-1", files=[ENTRY]))).type == "ack"
    assert (await ask_sealed(core, m.Lookup(file_id=FID), source=("10.0.0.3", 1))).peers == [("seeder-1", 7000)]


async def test_only_the_registering_address_may_heartbeat_or_unregister(tracker):
    await ask(tracker, m.Register(port=7000, files=[ENTRY]), source=("10.0.0.1", 5555))
    stranger = ("10.0.0.2", 5555)  # another address
    assert (await ask(tracker, m.Heartbeat(txn=2, port=7000, host="10.0.0.1"), source=stranger)).code == "forbidden"
    assert await ask(tracker, m.Heartbeat(txn=2, port=7000), source=stranger) == m.ErrorReply(
        txn=2, code="unknown_seeder", message="register again"
    )  # its own 10.0.0.2:7000 is no holder
    assert (await ask(tracker, m.Unregister(port=7000, host="10.0.0.1"), source=stranger)).code == "forbidden"
    assert (await ask(tracker, m.Lookup(file_id=FID))).peers == [("10.0.0.1", 7000)]
    # A restarted seeder (same address, a new socket) takes its entry over without waiting.
    restarted = ("10.0.0.1", 5556)
    assert (await ask(tracker, m.Register(port=7000, files=[ENTRY]), source=restarted)).type == "ack"
    assert (await ask(tracker, m.Heartbeat(port=7000), source=restarted)).type == "ack"
    await tracker.expire(3.5)  # nothing but real beats kept it
    assert await tracker.holders() == 0


async def test_older_versions_hear_forbidden_as_malformed(tracker):
    raw = await ask_raw(tracker, b'{"v":1,"txn":4,"type":"register","port":22,"host":"10.0.0.2"}')
    assert raw["v"] == 1 and raw["code"] == "malformed" and "address" in raw["message"]
    raw = await ask_raw(tracker, b'{"v":2,"txn":4,"type":"register","port":22,"host":"10.0.0.2"}')
    assert raw["v"] == 2 and raw["code"] == "malformed"


async def test_registry_caps_are_refused_as_full_and_counted_by_reason(make_store):
    core = Tracker(await make_store(ttl=3.0, max_files_per_address=2), interval=1.0, max_peers=2)
    holders, registry = core.store, core.prom
    other = m.FileEntry(file_id="ef" * 32, name="other.bin", size=1, chunk_size=1)
    third = m.FileEntry(file_id="01" * 32, name="third.bin", size=1, chunk_size=1)
    assert (await ask(core, m.Register(port=7000, files=[ENTRY, other]))).type == "ack"
    reply = await ask(core, m.Register(port=7001, files=[third]))
    assert reply.code == "full" and "address" in reply.message
    assert await metric(core, "p2p_tracker_refused_datagrams_total", reason="files_per_address") == 1
    assert await metric(core, "p2p_tracker_registrations_total", result="rejected") == 1


def files_of(reply) -> list[str]:
    return [f.file_id for f in reply.files]


async def test_the_file_list_is_paged_by_a_cursor_in_file_id_order(make_store):
    core = Tracker(await make_store(ttl=3.0), interval=1.0, max_peers=2)
    holders, registry = core.store, core.prom
    entries = [m.FileEntry(file_id=f"{n:064x}", name=f"f{n}.bin", size=1, chunk_size=1) for n in range(40, 0, -1)]
    await ask(core, m.Register(port=7000, files=entries[:16]))
    await ask(core, m.Register(port=7000, files=entries[16:32]))
    await ask(core, m.Register(port=7000, files=entries[32:]))
    first = await ask(core, m.ListFiles())
    assert first.total == 40 and files_of(first) == [f"{n:064x}" for n in range(1, 17)] and first.next == f"{16:064x}"
    second = await ask(core, m.ListFiles(after=first.next))
    assert files_of(second) == [f"{n:064x}" for n in range(17, 33)] and second.next == f"{32:064x}"
    last = await ask(core, m.ListFiles(after=second.next))
    assert files_of(last) == [f"{n:064x}" for n in range(33, 41)] and last.next is None
    # Versions 1 and 2 have no cursor: they get the first page and the total, as before.
    for version in (1, 2):
        raw = await ask_raw(core, b'{"v":%d,"txn":1,"type":"list_files"}' % version)
        assert raw["v"] == version and raw["total"] == 40 and "next" not in raw and len(raw["files"]) == 16


async def test_a_replayed_sealed_register_is_refused_however_many_datagrams_came_between(make_store):
    from p2p_shared.auth import Sealer

    core = Tracker(await make_store(ttl=3.0), 1.0, 50, sealer=Sealer(SECRET, max_nonces=1000))
    registry = core.prom
    member, now, source = Sealer(SECRET), 1000.0, ("10.0.0.1", 5555)
    conn = m.decode(member.open(await core.handle(member.seal(m.encode_request(m.Connect()), now), source, now), now)).conn
    register = member.seal(m.encode(m.Register(conn=conn, port=7000, files=[ENTRY])), now)
    assert m.decode(member.open(await core.handle(register, source, now), now)).type == "ack"
    await core.handle(member.seal(m.encode(m.Unregister(conn=conn, port=7000)), now), source, now)
    for _ in range(1100):  # more than the memory holds, within the timestamp window
        await core.handle(member.seal(m.encode(m.Lookup(conn=conn, file_id=FID)), now), source, now + 1)
    assert await core.handle(register, source, now + 2) is None
    assert await core.holders() == 0
    if core.store.shared:  # replicas remember every nonce in Redis, each for its window: no cap to reach
        assert registry.get_sample_value("p2p_tracker_refused_datagrams_total", {"reason": "unauthenticated"}) == 1
    else:
        assert registry.get_sample_value("p2p_tracker_refused_datagrams_total", {"reason": "nonces_full"}) >= 100
    # Once the window has passed, the memory empties and members are served again.
    later = now + 65
    assert await core.handle(member.seal(m.encode_request(m.Connect()), later), source, later) is not None


UNPROVEN = [
    b'{"type":"connect"}',
    b'{"type":"list_files"}',
    b'{"type":"lookup","name":"demo.bin"}',
    b'{"v":1,"txn":7,"type":"connect"}',
    b'{"v":2,"txn":4294967295,"type":"connect"}',
    b'{"v":9,"txn":1,"type":"connect"}',
    b'{"v":3,"txn":3,"type":"register","port":7000,"conn":1}',
    b'{"v":3,"txn":3,"type":"heartbeat","port":7000,"conn":12345678901234}',
    b'{"v":4,"txn":3,"type":"drop","port":7000,"files":["%s"]}' % FID.encode(),
]


@pytest.mark.parametrize("request_bytes", UNPROVEN)
async def test_an_unproven_address_gets_nothing_larger_than_it_sent(tracker, request_bytes):
    answer = await tracker.handle(request_bytes, ("10.9.9.9", 1), 0.0)
    assert answer is None or len(answer) <= len(request_bytes)


async def test_a_padded_connect_is_answered_and_the_short_ones_counted(tracker):
    padded = m.encode_request(m.Connect(txn=2**32 - 1))
    answer = await tracker.handle(padded, ("10.9.9.9", 1), 0.0)
    assert m.decode(answer).type == "connected" and len(answer) <= len(padded)
    assert await tracker.handle(m.encode(m.Connect(txn=5)), ("10.9.9.9", 1), 0.0) is None
    assert await metric(tracker, "p2p_tracker_refused_datagrams_total", reason="unpadded") == 1
    # An unknown version still hears which versions the tracker speaks, when it asked with room for it.
    newer = b'{"v":9,"txn":1,"type":"connect"}'.ljust(200)
    assert m.decode(await tracker.handle(newer, ("10.9.9.9", 1), 0.0)).code == "unsupported_version"


def at_once(request):
    """The answer of a request to the memory store, which never waits (as the shell runs it)."""
    try:
        request.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the memory store waited")


def test_a_list_files_datagram_costs_the_same_work_with_20_or_20000_files():
    # Issue 12, item 16: the tracker sorted every file on every call (80,283 Python calls at
    # 20,000 files, 363 at 20). Counted work, not time: the count does not drift with the machine.
    def handled(files: int):
        store = MemoryStore(Limits(ttl=1000))
        store.registry = crowded(files)
        core = Tracker(store, max_peers=2)
        conn = core.ids.issue("10.0.0.1", 0.0)
        request = m.encode(m.ListFiles(conn=conn, after=f"{files // 2:064x}"))
        return lambda: at_once(core.handle(request, ("10.0.0.1", 1), 0.0))

    small, big = handled(20), handled(20_000)
    assert m.decode(big()).next is not None and len(m.decode(big()).files) == 16
    assert python_calls(big) <= 2 * python_calls(small) + 50


# Replicas on one Redis store, and a store that does not answer.


async def test_replicas_accept_each_others_connection_ids_and_refuse_each_others_replays(redis_stores):
    import os

    from p2p_shared.auth import ConnectionIds, Sealer
    from p2p_tracker.main import connection_key

    replicas = []
    for _ in range(2):
        store = await redis_stores(ttl=3.0)
        ids = ConnectionIds(await connection_key(store, None, os.urandom(32)))
        replicas.append(Tracker(store, ids=ids))
    a, b = replicas
    assert a.ids.key == b.ids.key  # the first replica's key, kept in Redis
    conn = m.decode(await a.handle(m.encode_request(m.Connect()), ("10.0.0.1", 5555), 0.0)).conn
    assert (await ask(b, m.Register(conn=conn, port=7000, files=[ENTRY]))).type == "ack"
    assert (await ask(a, m.Lookup(file_id=FID), source=("10.0.0.2", 1))).peers == [("10.0.0.1", 7000)]
    # With the swarm secret, a sealed datagram one replica accepted is a replay at the other.
    sealed = [Tracker(await redis_stores(ttl=3.0), sealer=Sealer(SECRET)) for _ in range(2)]
    member, now = Sealer(SECRET), 1000.0
    connect = member.seal(m.encode_request(m.Connect()), now)
    assert await sealed[0].handle(connect, ("10.0.0.1", 1), now) is not None
    assert await sealed[1].handle(connect, ("10.0.0.1", 1), now + 1) is None
    assert sealed[1].prom.get_sample_value("p2p_tracker_refused_datagrams_total", {"reason": "unauthenticated"}) == 1


async def test_a_store_that_does_not_answer_gets_unavailable_and_is_counted():
    from p2p_tracker.redis_store import RedisStore
    from tools.localswarm import free_port

    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", Limits(ttl=3.0), timeout=0.5)  # nothing listens
    tracker = Tracker(store)
    try:
        reply = await ask(tracker, m.Register(txn=4, port=7000, files=[ENTRY]))
        assert reply == m.ErrorReply(txn=4, code="unavailable", message="registry store unavailable: retry later")
        assert (await ask(tracker, m.Lookup(file_id=FID))).code == "unavailable"
        # Versions 1 and 2 do not know the code: nothing, as for a lost datagram.
        assert await ask_raw_or_none(tracker, b'{"v":2,"txn":5,"type":"lookup","file_id":"%s"}' % FID.encode()) is None
        assert tracker.prom.get_sample_value("p2p_tracker_store_errors_total", {"reason": "connection"}) == 3
        assert tracker.prom.get_sample_value("p2p_tracker_store_up") == 0
        connected = await tracker.handle(m.encode_request(m.Connect()), ("10.0.0.1", 1), 0.0)
        assert m.decode(connected).type == "connected"  # what needs no store is still answered
    finally:
        await store.close()


async def ask_raw_or_none(core, request: bytes, source=("10.0.0.1", 5555), now=0.0):
    conn = json.loads(await core.handle(b'{"v":1,"type":"connect"}'.ljust(80), source, now))["conn"]
    return await core.handle(request.replace(b"{", b'{"conn":%d,' % conn, 1), source, now)


# Version 4: a holder drops files and stays registered, on either store.

OTHER = m.FileEntry(file_id="ef" * 32, name="other.bin", size=1, chunk_size=1)


async def test_a_holder_drops_one_file_and_stays_the_holder_of_the_other(tracker):
    assert tracker.prom.get_sample_value("p2p_tracker_datagrams_total", {"type": "drop"}) == 0  # exposed from the start
    assert tracker.prom.get_sample_value("p2p_tracker_drops_total") == 0
    await ask(tracker, m.Register(port=7000, files=[ENTRY, OTHER]))
    assert await metric(tracker, "p2p_tracker_files") == 2
    with structlog.testing.capture_logs() as logs:
        reply = await ask(tracker, m.Drop(txn=5, port=7000, files=[FID]), now=1.0)
    assert reply == m.Ack(txn=5, interval=1.0)
    assert {"event": "holder dropped files", "log_level": "info", "holder": "10.0.0.1:7000", "files": 1} in logs
    found = await ask(tracker, m.Lookup(file_id=FID), source=("10.9.9.9", 1))
    assert found.file is None and found.peers == [] and found.partial == []
    assert (await ask(tracker, m.Lookup(name="other.bin"), source=("10.9.9.9", 1))).peers == [("10.0.0.1", 7000)]
    listed = await ask(tracker, m.ListFiles())
    assert listed.total == 1 and [(f.name, f.seeders, f.partial) for f in listed.files] == [("other.bin", 1, 0)]
    assert await metric(tracker, "p2p_tracker_files") == 1
    assert await metric(tracker, "p2p_tracker_live_holders", kind="complete") == 1
    assert await tracker.holders() == 1 and (await tracker.store.refresh_stats()).holdings == 1
    assert await metric(tracker, "p2p_tracker_datagrams_total", type="drop") == 1
    assert await metric(tracker, "p2p_tracker_drops_total") == 1
    assert await metric(tracker, "p2p_tracker_unregistrations_total") == 0
    # Its last file too: still a holder (heartbeats go on), of nothing.
    assert (await ask(tracker, m.Drop(port=7000, files=[OTHER.file_id, FID]), now=2.0)).type == "ack"
    assert await metric(tracker, "p2p_tracker_files") == 0 and await tracker.holders() == 1
    assert (await ask(tracker, m.ListFiles())).total == 0
    assert (await ask(tracker, m.Heartbeat(port=7000), now=2.5)).type == "ack"
    assert await metric(tracker, "p2p_tracker_drops_total") == 3  # file ids named: 1, then 2


async def test_a_partial_holder_drops_a_file_and_the_gauges_follow(tracker):
    await ask(tracker, m.Register(port=7100, files=[ENTRY]), source=LEECHER)
    await ask(tracker, m.Register(port=7100, files=[OTHER], partial=True), source=LEECHER)
    assert await metric(tracker, "p2p_tracker_live_holders", kind="partial") == 1
    assert (await ask(tracker, m.Drop(port=7100, files=[OTHER.file_id]), source=LEECHER)).type == "ack"
    assert await metric(tracker, "p2p_tracker_live_holders", kind="partial") == 0
    assert await metric(tracker, "p2p_tracker_live_holders", kind="complete") == 1
    assert await metric(tracker, "p2p_tracker_files") == 1
    assert (await ask(tracker, m.Lookup(file_id=FID))).peers == [("10.0.0.7", 7100)]


async def test_a_drop_keeps_the_holder_alive_like_a_heartbeat(tracker):
    await ask(tracker, m.Register(port=7000, files=[ENTRY, OTHER]), now=0)
    await ask(tracker, m.Drop(port=7000, files=[OTHER.file_id]), now=2.5)
    await tracker.expire(5.0)  # registered at 0 with a ttl of 3, heard from at 2.5
    assert await tracker.holders() == 1
    await tracker.expire(5.6)
    assert await tracker.holders() == 0 and await metric(tracker, "p2p_tracker_files_without_seeders") == 1


async def test_a_drop_from_an_unknown_holder_says_register_again(tracker):
    reply = await ask(tracker, m.Drop(txn=6, port=7000, files=[FID]))
    assert reply == m.ErrorReply(txn=6, code="unknown_seeder", message="register again")
    await ask(tracker, m.Register(port=7000, files=[ENTRY]), now=0)
    await tracker.expire(3.5)  # forgotten: its next drop hears so too
    assert (await ask(tracker, m.Drop(port=7000, files=[FID]), now=4.0)).code == "unknown_seeder"
    assert await metric(tracker, "p2p_tracker_drops_total") == 0


async def test_only_the_registering_address_may_drop(tracker):
    await ask(tracker, m.Register(port=7000, files=[ENTRY, OTHER]), source=("10.0.0.1", 5555))
    stranger = ("10.0.0.2", 5555)
    reply = await ask(tracker, m.Drop(txn=3, port=7000, host="10.0.0.1", files=[FID]), source=stranger)
    assert reply.code == "forbidden" and reply.txn == 3 and reply.v == 5
    assert await metric(tracker, "p2p_tracker_refused_datagrams_total", reason="foreign_host") == 1
    # A holder at the stranger's own address that another address registered (only a member may do that).
    await tracker.store.register(("10.0.0.2", 7000), [ENTRY], 0.0, sender=("10.0.0.1", 5555))
    assert (await ask(tracker, m.Drop(port=7000, files=[FID]), source=stranger)).code == "forbidden"
    assert await metric(tracker, "p2p_tracker_refused_datagrams_total", reason="not_registrant") == 1
    assert sorted((await ask(tracker, m.Lookup(file_id=FID))).peers) == [("10.0.0.1", 7000), ("10.0.0.2", 7000)]
    assert await metric(tracker, "p2p_tracker_files") == 2 and await metric(tracker, "p2p_tracker_drops_total") == 0
    # Another socket of the registering address may (a restarted peer).
    assert (await ask(tracker, m.Drop(port=7000, files=[FID]), source=("10.0.0.1", 5556))).type == "ack"
    assert (await ask(tracker, m.Lookup(file_id=FID))).peers == [("10.0.0.2", 7000)]


async def test_a_member_may_drop_for_an_advertised_host(make_store):
    core = await sealed_core(make_store)
    assert (await ask_sealed(core, m.Register(port=7000, host="peer-1", files=[ENTRY, OTHER]))).type == "ack"
    assert (await ask_sealed(core, m.Drop(port=7000, host="peer-1", files=[FID]), source=("10.0.0.3", 1))).type == "ack"
    assert (await ask_sealed(core, m.Lookup(file_id=OTHER.file_id))).peers == [("peer-1", 7000)]
    assert (await ask_sealed(core, m.Lookup(file_id=FID))).peers == []


async def test_version_3_clients_are_served_as_before_and_cannot_drop(tracker):
    entry = ENTRY.model_dump_json().encode()
    ack = await ask_raw(tracker, b'{"v":3,"txn":4,"type":"register","port":7000,"files":[%s]}' % entry)
    assert ack == {"v": 3, "txn": 4, "type": "ack", "interval": 1.0}
    assert await ask_raw(tracker, b'{"v":3,"txn":5,"type":"heartbeat","port":7000}') == {
        "v": 3, "txn": 5, "type": "ack", "interval": 1.0
    }
    found = await ask_raw(tracker, b'{"v":3,"txn":6,"type":"lookup","file_id":"%s"}' % FID.encode())
    assert found == {"v": 3, "txn": 6, "type": "peers", "file": ENTRY.model_dump(), "peers": [["10.0.0.1", 7000]], "partial": []}
    listed = await ask_raw(tracker, b'{"v":3,"txn":7,"type":"list_files"}')
    assert listed == {"v": 3, "txn": 7, "type": "files", "files": [{**ENTRY.model_dump(), "seeders": 1, "partial": 0}], "total": 1}
    # A drop in version 3 is malformed: dropped without an answer, and nothing changes.
    assert await ask_raw_or_none(tracker, b'{"v":3,"txn":8,"type":"drop","port":7000,"files":["%s"]}' % FID.encode()) is None
    assert await metric(tracker, "p2p_tracker_malformed_datagrams_total", reason="invalid") == 1
    assert (await ask(tracker, m.Lookup(file_id=FID))).peers == [("10.0.0.1", 7000)]
    assert await ask_raw(tracker, b'{"v":3,"txn":9,"type":"unregister","port":7000}') == {
        "v": 3, "txn": 9, "type": "ack", "interval": 1.0
    }
    assert await tracker.holders() == 0
    # A version 4 drop is answered in version 4.
    assert await ask_raw(tracker, b'{"v":4,"txn":10,"type":"drop","port":7000,"files":["%s"]}' % FID.encode()) == {
        "v": 4, "txn": 10, "type": "error", "code": "unknown_seeder", "message": "register again"
    }


async def test_a_claim_answers_who_holds_the_lease_and_only_for_the_senders_own_holder(tracker):
    first = await ask(tracker, m.Claim(txn=5, key="sha256:ab", port=7000), source=("10.0.0.1", 5555))
    assert first.type == "lease" and first.holder == ("10.0.0.1", 7000) and first.mine and first.ttl > 0
    assert first.txn == 5
    second = await ask(tracker, m.Claim(key="sha256:ab", port=7000), source=("10.0.0.2", 5555))
    assert second.holder == ("10.0.0.1", 7000) and not second.mine
    # Nobody gives back a lease for another address.
    foreign = await ask(tracker, m.Claim(key="sha256:ab", port=7000, host="10.0.0.1", release=True), source=("10.0.0.2", 1))
    assert foreign.code == "forbidden"
    released = await ask(tracker, m.Claim(key="sha256:ab", port=7000, release=True), source=("10.0.0.1", 5556))
    assert released.type == "lease" and released.holder is None
    assert (await ask(tracker, m.Claim(key="sha256:ab", port=7000), source=("10.0.0.2", 5555))).holder == ("10.0.0.2", 7000)
    claims = lambda result: metric(tracker, "p2p_tracker_lease_claims_total", result=result)
    assert (await claims("granted"), await claims("held"), await claims("released")) == (2, 1, 1)
