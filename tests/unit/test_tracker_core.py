"""The tracker's handling, datagram in and answer out, on a fake clock with real metrics."""

import json
import random

import pytest
from prometheus_client import CollectorRegistry

from p2p_shared import messages as m
from p2p_shared.limits import MAX_DATAGRAM
from p2p_shared.registry import HolderRegistry
from p2p_tracker.core import TrackerCore
from p2p_tracker.metrics import TrackerMetrics

from .work import crowded, python_calls

FID = "cd" * 32
ENTRY = m.FileEntry(file_id=FID, name="demo.bin", size=100, chunk_size=10)


@pytest.fixture
def tracker():
    registry = CollectorRegistry()
    seeders = HolderRegistry(ttl=3.0, max_holders=3)
    core = TrackerCore(seeders, TrackerMetrics(registry, seeders), interval=1.0, max_peers=2, rng=random.Random(1))
    core.prom = registry
    return core


def ask(core, message, source=("10.0.0.1", 5555), now=0.0):
    """One request as a well-behaved client sends it: with a connection id for its address."""
    if isinstance(message, m.ProvenRequest) and message.conn is None:
        connected = m.decode(core.handle(m.encode_request(m.Connect()), source, now))
        message = message.model_copy(update={"conn": connected.conn})
    answer = core.handle(m.encode(message), source, now)
    return None if answer is None else m.decode(answer)


def metric(core, name, **labels):
    return core.prom.get_sample_value(name, labels) or 0.0


def test_register_then_lookup_uses_the_source_address(tracker):
    reply = ask(tracker, m.Register(txn=7, port=7000, files=[ENTRY]))
    assert reply == m.Ack(txn=7, interval=1.0)
    peers = ask(tracker, m.Lookup(txn=8, name="demo.bin"), source=("10.9.9.9", 1))
    assert peers.txn == 8 and peers.file == ENTRY
    assert peers.peers == [("10.0.0.1", 7000)]
    assert metric(tracker, "p2p_tracker_registrations_total", result="new") == 1
    assert metric(tracker, "p2p_tracker_live_holders", kind="complete") == 1
    assert metric(tracker, "p2p_tracker_live_holders", kind="partial") == 0
    assert metric(tracker, "p2p_tracker_files") == 1


def test_an_advertised_host_that_is_the_source_address_is_accepted(tracker):
    ask(tracker, m.Register(port=7000, host="::ffff:10.0.0.1", files=[ENTRY]))  # (another host: see below)
    assert ask(tracker, m.Lookup(file_id=FID)).peers == [("::ffff:10.0.0.1", 7000)]


def test_lookup_answers_are_capped(tracker):
    for i in range(3):
        ask(tracker, m.Register(port=7000 + i, files=[ENTRY]))
    assert len(ask(tracker, m.Lookup(file_id=FID)).peers) == 2


def test_peer_list_is_trimmed_to_fit_a_datagram():
    registry = CollectorRegistry()
    seeders = HolderRegistry(ttl=3.0)
    core = TrackerCore(seeders, TrackerMetrics(registry, seeders), interval=1.0, max_peers=50)
    for i in range(50):  # long host names: only members may advertise those
        seeders.register(("h" * 250 + f"{i:03}", 7000 + i), [ENTRY], 0.0, member=True)
    conn = core.ids.issue("10.0.0.1", 0.0)
    answer = core.handle(m.encode(m.Lookup(conn=conn, file_id=FID)), ("10.0.0.1", 1), 0.0)
    assert len(answer) <= MAX_DATAGRAM
    assert 10 <= len(m.decode(answer).peers) < 50


def test_unknown_file_gives_empty_answer(tracker):
    reply = ask(tracker, m.Lookup(name="nothing"))
    assert reply.file is None and reply.peers == []
    assert metric(tracker, "p2p_tracker_lookups_total", result="not_found") == 1


def test_heartbeat_keeps_alive_and_expiry_forgets(tracker):
    ask(tracker, m.Register(port=7000, files=[ENTRY]), now=0)
    assert ask(tracker, m.Heartbeat(port=7000), now=2.5).type == "ack"
    tracker.expire(now=5.0)
    assert len(tracker.registry) == 1
    tracker.expire(now=5.6)
    assert len(tracker.registry) == 0
    assert metric(tracker, "p2p_tracker_expirations_total") == 1
    reply = ask(tracker, m.Heartbeat(txn=4, port=7000), now=6)
    assert reply == m.ErrorReply(txn=4, code="unknown_seeder", message="register again")
    assert metric(tracker, "p2p_tracker_heartbeats_total", result="unknown") == 1


def test_unregister_forgets_at_once(tracker):
    ask(tracker, m.Register(port=7000, files=[ENTRY]))
    assert ask(tracker, m.Unregister(port=7000)).type == "ack"
    assert ask(tracker, m.Lookup(file_id=FID)).peers == []
    assert metric(tracker, "p2p_tracker_unregistrations_total") == 1


def test_list_files(tracker):
    ask(tracker, m.Register(port=7000, files=[ENTRY]))
    ask(tracker, m.Register(port=7001, files=[ENTRY]))
    reply = ask(tracker, m.ListFiles())
    assert reply.total == 1 and reply.files[0].seeders == 2 and reply.files[0].name == "demo.bin"


def test_full_registry_refuses_with_typed_error(tracker):
    for i in range(3):
        ask(tracker, m.Register(port=7000 + i))
    reply = ask(tracker, m.Register(port=8000))
    assert reply.type == "error" and reply.code == "full"
    assert metric(tracker, "p2p_tracker_registrations_total", result="rejected") == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "invalid"), (b"\xff\xfe", "invalid"), (b'{"type":"x"}', "invalid"), (b"x" * 9000, "too_large")],
)
def test_malformed_datagrams_are_dropped_and_counted(tracker, data, reason):
    assert tracker.handle(data, ("10.0.0.1", 1), 0.0) is None
    assert metric(tracker, "p2p_tracker_malformed_datagrams_total", reason=reason) == 1


def test_answers_sent_to_the_tracker_are_not_reflected(tracker):
    assert tracker.handle(m.encode(m.Ack(interval=1)), ("10.0.0.1", 1), 0.0) is None
    assert metric(tracker, "p2p_tracker_malformed_datagrams_total", reason="unexpected") == 1


@pytest.mark.parametrize("version", [0, 4, 255])
def test_other_protocol_version_gets_a_typed_error(tracker, version):
    request = b'{"v":%d,"txn":9,"type":"connect"}' % version
    answer = tracker.handle(request.ljust(120), ("10.0.0.1", 1), 0.0)  # room for the whole answer
    assert answer == b'{"v":3,"txn":9,"type":"error","code":"unsupported_version","message":"this tracker speaks versions 1, 2 and 3"}'
    # As short an answer as the request leaves room for: without the text, or nothing.
    assert tracker.handle(request.ljust(60), ("10.0.0.1", 1), 0.0) == (
        b'{"v":3,"txn":9,"type":"error","code":"unsupported_version"}'
    )
    assert tracker.handle(request, ("10.0.0.1", 1), 0.0) is None
    assert metric(tracker, "p2p_tracker_malformed_datagrams_total", reason="unsupported_version") == 3


def test_a_flood_from_one_address_is_dropped_and_counted():
    from p2p_shared.ratelimit import AddressLimiter

    registry = CollectorRegistry()
    seeders = HolderRegistry(ttl=3.0)
    core = TrackerCore(seeders, TrackerMetrics(registry, seeders), 1.0, 50, limiter=AddressLimiter(100, 10))
    conn = core.ids.issue("10.6.6.6", 0.0)
    flood = [core.handle(m.encode(m.Register(conn=conn, port=7000 + i)), ("10.6.6.6", 1), 0.0) for i in range(50)]
    assert sum(a is not None for a in flood) == 10 and len(seeders) == 10
    assert registry.get_sample_value("p2p_tracker_refused_datagrams_total", {"reason": "rate_limited"}) == 40
    assert core.handle(m.encode_request(m.Connect()), ("10.0.0.2", 1), 0.0) is not None  # others still served


def test_requests_without_a_connection_id_get_only_a_short_error(tracker):
    ask(tracker, m.Register(port=7000, files=[ENTRY]))
    request = m.encode(m.Lookup(txn=5, file_id=FID))
    answer = tracker.handle(request, ("10.9.9.9", 1), 0.0)
    assert m.decode(answer) == m.ErrorReply(txn=5, code="connect_first")
    assert len(answer) <= len(request)  # no amplification towards an address that did not ask
    assert metric(tracker, "p2p_tracker_refused_datagrams_total", reason="unconnected") == 1
    # A spoofed registration (an id issued to another address) records nothing.
    stolen = m.decode(tracker.handle(m.encode_request(m.Connect()), ("10.0.0.1", 1), 0.0)).conn
    spoofed = tracker.handle(m.encode(m.Register(conn=stolen, port=9999)), ("10.7.7.7", 1), 0.0)
    assert m.decode(spoofed).code == "connect_first" and ("10.7.7.7", 9999) not in tracker.registry


def test_connection_ids_expire(tracker):
    conn = m.decode(tracker.handle(m.encode_request(m.Connect()), ("10.0.0.1", 1), 0.0)).conn
    assert ask(tracker, m.ListFiles(conn=conn), now=100.0).type == "files"
    assert ask(tracker, m.ListFiles(conn=conn), now=130.0).code == "connect_first"


def test_with_a_swarm_secret_only_sealed_datagrams_count():
    from p2p_shared.auth import Sealer

    registry = CollectorRegistry()
    seeders = HolderRegistry(ttl=3.0)
    core = TrackerCore(seeders, TrackerMetrics(registry, seeders), 1.0, 50, sealer=Sealer(b"s" * 16))
    member = Sealer(b"s" * 16)
    assert core.handle(m.encode_request(m.Connect()), ("10.0.0.1", 1), 1000.0) is None  # unsigned: dropped
    assert core.handle(Sealer(b"x" * 16).seal(m.encode_request(m.Connect()), 1000.0), ("10.0.0.1", 1), 1000.0) is None
    sealed = member.seal(m.encode_request(m.Connect(txn=3)), 1000.0)
    answer = core.handle(sealed, ("10.0.0.1", 1), 1000.0)
    assert m.decode(member.open(answer, 1000.0)).type == "connected"
    assert core.handle(sealed, ("10.0.0.1", 1), 1001.0) is None  # replayed
    assert registry.get_sample_value("p2p_tracker_refused_datagrams_total", {"reason": "unauthenticated"}) == 3


# Partial holders (protocol version 2) and version 1 clients, datagram bytes in and out.

LEECHER = ("10.0.0.7", 40000)  # a leecher's datagrams come from an ephemeral port; it serves on 7100


def ask_raw(core, request: bytes, source=("10.0.0.1", 5555), now=0.0) -> dict:
    """A request as exact bytes (connection id added), the answer as parsed JSON with every key."""
    conn = json.loads(core.handle(b'{"v":1,"type":"connect"}'.ljust(80), source, now))["conn"]
    return json.loads(core.handle(request.replace(b"{", b'{"conn":%d,' % conn, 1), source, now))


def test_version_1_client_gets_version_1_answers_with_complete_holders_only(tracker):
    ask(tracker, m.Register(port=7000, files=[ENTRY]))
    ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=LEECHER)
    connected = tracker.handle(b'{"v":1,"txn":1,"type":"connect"}'.ljust(80), ("10.0.0.9", 1), 0.0)
    assert json.loads(connected).keys() == {"v", "txn", "type", "conn"} and json.loads(connected)["v"] == 1
    answer = ask_raw(tracker, b'{"v":1,"txn":2,"type":"lookup","file_id":"%s"}' % FID.encode(), ("10.0.0.9", 1))
    assert answer == {"v": 1, "txn": 2, "type": "peers", "file": ENTRY.model_dump(), "peers": [["10.0.0.1", 7000]]}
    listed = ask_raw(tracker, b'{"v":1,"txn":3,"type":"list_files"}', ("10.0.0.9", 1))
    assert listed == {"v": 1, "txn": 3, "type": "files", "files": [{**ENTRY.model_dump(), "seeders": 1}], "total": 1}


def test_version_1_register_heartbeat_unregister(tracker):
    ack = ask_raw(tracker, b'{"v":1,"txn":4,"type":"register","port":7000,"files":[%s]}' % ENTRY.model_dump_json().encode())
    assert ack == {"v": 1, "txn": 4, "type": "ack", "interval": 1.0}
    assert ask(tracker, m.Lookup(file_id=FID)).peers == [("10.0.0.1", 7000)]
    assert ask_raw(tracker, b'{"v":1,"txn":5,"type":"heartbeat","port":7000}', now=1.0)["type"] == "ack"
    assert ask_raw(tracker, b'{"v":1,"txn":6,"type":"unregister","port":7000}', now=1.0)["v"] == 1
    unknown = ask_raw(tracker, b'{"v":1,"txn":7,"type":"heartbeat","port":7000}', now=1.0)
    assert unknown == {"v": 1, "txn": 7, "type": "error", "code": "unknown_seeder", "message": "register again"}


def test_version_1_lookup_of_a_file_only_partial_holders_have_finds_nothing(tracker):
    ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=LEECHER)
    answer = ask_raw(tracker, b'{"v":1,"txn":8,"type":"lookup","name":"demo.bin"}')
    assert answer == {"v": 1, "txn": 8, "type": "peers", "peers": []}
    assert metric(tracker, "p2p_tracker_lookups_total", result="not_found") == 1
    assert ask(tracker, m.Lookup(name="demo.bin")).partial == [("10.0.0.7", 7100)]  # version 2 sees it


def test_version_1_cannot_register_partial(tracker):
    request = b'{"v":1,"type":"register","port":7000,"partial":true}'
    assert tracker.handle(request, ("10.0.0.1", 1), 0.0) is None
    assert metric(tracker, "p2p_tracker_malformed_datagrams_total", reason="invalid") == 1


def test_version_2_lookup_gets_both_kinds_bounded_and_never_the_asker(tracker):
    tracker.registry.max_holders = 6  # room for 3 seeders and 3 leechers
    for i in range(3):
        ask(tracker, m.Register(port=7000 + i, files=[ENTRY]), source=(f"10.0.1.{i}", 1))
        ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=(f"10.0.2.{i}", 1))
    answer = ask_raw(tracker, b'{"v":2,"txn":9,"type":"lookup","file_id":"%s"}' % FID.encode(), ("10.9.9.9", 1))
    assert answer["v"] == 2 and answer["txn"] == 9 and answer["file"] == ENTRY.model_dump()
    assert len(answer["peers"]) == 2 and {h for h, _ in answer["peers"]} <= {"10.0.1.0", "10.0.1.1", "10.0.1.2"}
    assert len(answer["partial"]) == 2 and {h for h, _ in answer["partial"]} <= {"10.0.2.0", "10.0.2.1", "10.0.2.2"}
    for seed in range(20):  # the asker, a partial holder itself, never hears of itself
        tracker.rng = random.Random(seed)
        reply = ask(tracker, m.Lookup(file_id=FID, port=7100), source=("10.0.2.1", 2))
        assert ("10.0.2.1", 7100) not in reply.partial and len(reply.partial) == 2 and len(reply.peers) == 2


def test_the_asker_with_an_advertised_host_is_left_out(tracker):
    tracker.registry.register(("leecher-1", 7100), [ENTRY], 0.0, partial=True, member=True)
    tracker.registry.register(("leecher-2", 7100), [ENTRY], 0.0, partial=True, member=True)
    reply = ask(tracker, m.Lookup(file_id=FID, port=7100, host="leecher-1"))
    assert reply.partial == [("leecher-2", 7100)] and reply.peers == []
    others = ask(tracker, m.Lookup(file_id=FID, port=7100))  # from 10.0.0.1: neither of them
    assert sorted(others.partial) == [("leecher-1", 7100), ("leecher-2", 7100)]


def test_a_partial_holder_that_finishes_registers_complete(tracker):
    ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=LEECHER)
    assert metric(tracker, "p2p_tracker_live_holders", kind="partial") == 1
    assert ask(tracker, m.ListFiles()).files[0].partial == 1
    ask(tracker, m.Register(port=7100, files=[ENTRY]), source=LEECHER, now=0.5)
    reply = ask(tracker, m.Lookup(file_id=FID))
    assert reply.peers == [("10.0.0.7", 7100)] and reply.partial == []
    assert metric(tracker, "p2p_tracker_live_holders", kind="complete") == 1
    assert metric(tracker, "p2p_tracker_live_holders", kind="partial") == 0
    [summary] = ask(tracker, m.ListFiles()).files
    assert (summary.seeders, summary.partial) == (1, 0)
    assert metric(tracker, "p2p_tracker_registrations_total", result="refreshed") == 1


def test_partial_holders_heartbeat_and_expire_like_seeders(tracker):
    ask(tracker, m.Register(port=7000, files=[ENTRY]), now=0)
    ask(tracker, m.Register(port=7100, files=[ENTRY], partial=True), source=LEECHER, now=0)
    assert ask(tracker, m.Heartbeat(port=7100), source=LEECHER, now=2.5).type == "ack"
    tracker.expire(now=3.5)  # the seeder's ttl is over, the leecher's is not
    assert metric(tracker, "p2p_tracker_live_holders", kind="complete") == 0
    assert metric(tracker, "p2p_tracker_live_holders", kind="partial") == 1
    assert ask(tracker, m.Lookup(file_id=FID), now=3.5).partial == [("10.0.0.7", 7100)]
    assert metric(tracker, "p2p_tracker_files_without_seeders") == 1  # no complete copy left
    tracker.expire(now=6.0)
    assert metric(tracker, "p2p_tracker_live_holders", kind="partial") == 0
    assert metric(tracker, "p2p_tracker_expirations_total") == 2
    assert ask(tracker, m.Heartbeat(txn=2, port=7100), source=LEECHER, now=6.0).code == "unknown_seeder"


def test_a_holder_complete_for_one_file_and_partial_for_another_counts_once_per_kind(tracker):
    other = m.FileEntry(file_id="ef" * 32, name="other.bin", size=1, chunk_size=1)
    ask(tracker, m.Register(port=7100, files=[ENTRY]), source=LEECHER)
    ask(tracker, m.Register(port=7100, files=[other], partial=True), source=LEECHER)
    assert metric(tracker, "p2p_tracker_live_holders", kind="complete") == 1
    assert metric(tracker, "p2p_tracker_live_holders", kind="partial") == 1
    assert metric(tracker, "p2p_tracker_files") == 2


def test_both_peer_lists_are_trimmed_to_fit_a_datagram():
    registry = CollectorRegistry()
    holders = HolderRegistry(ttl=3.0)
    core = TrackerCore(holders, TrackerMetrics(registry, holders), interval=1.0, max_peers=50)
    for i in range(50):  # long host names: only members may advertise those
        holders.register(("h" * 250 + f"{i:03}", 7000 + i), [ENTRY], 0.0, member=True)
        holders.register(("p" * 250 + f"{i:03}", 7000 + i), [ENTRY], 0.0, partial=True, member=True)
    conn = core.ids.issue("10.0.0.1", 0.0)
    answer = core.handle(m.encode(m.Lookup(conn=conn, file_id=FID)), ("10.0.0.1", 1), 0.0)
    assert len(answer) <= MAX_DATAGRAM
    reply = m.decode(answer)
    assert 5 <= len(reply.peers) < 50 and 5 <= len(reply.partial) < 50
    # A version 1 answer has only the complete holders to trim, so it keeps more of them.
    v1 = core.handle(b'{"v":1,"conn":%d,"type":"lookup","file_id":"%s"}' % (conn, FID.encode()), ("10.0.0.1", 1), 0.0)
    assert len(v1) <= MAX_DATAGRAM and len(m.decode(v1).peers) > len(reply.peers)


# Issue 12, items 14-20, datagram in and answer out.

SECRET = b"s" * 16


def sealed_core() -> TrackerCore:
    from p2p_shared.auth import Sealer

    registry = CollectorRegistry()
    holders = HolderRegistry(ttl=3.0)
    core = TrackerCore(holders, TrackerMetrics(registry, holders), 1.0, 50, sealer=Sealer(SECRET))
    core.prom = registry
    return core


def ask_sealed(core, message, source=("10.0.0.1", 5555), now=1000.0):
    from p2p_shared.auth import Sealer

    member = Sealer(SECRET)
    connected = m.decode(member.open(core.handle(member.seal(m.encode_request(m.Connect()), now), source, now), now))
    message = message.model_copy(update={"conn": connected.conn})
    return m.decode(member.open(core.handle(member.seal(m.encode_request(message), now), source, now), now))


def test_a_host_other_than_the_senders_address_needs_the_swarm_secret(tracker):
    for host in ("10.0.0.2", "127.0.0.1", "seeder-1"):
        reply = ask(tracker, m.Register(txn=3, port=22, host=host, files=[ENTRY]))
        assert reply.type == "error" and reply.code == "forbidden" and reply.txn == 3
    assert len(tracker.registry) == 0
    assert metric(tracker, "p2p_tracker_refused_datagrams_total", reason="foreign_host") == 3
    assert ask(tracker, m.Register(port=7000, host="10.0.0.1", files=[ENTRY])).type == "ack"  # its own address
    assert ask(tracker, m.Heartbeat(port=7000, host="10.0.0.9")).code == "forbidden"
    assert ask(tracker, m.Unregister(port=7000, host="10.0.0.9")).code == "forbidden"
    core = sealed_core()  # a member proves itself with the secret: it may advertise any host
    assert ask_sealed(core, m.Register(port=7000, host="seeder-1", files=[ENTRY])).type == "ack"
    assert ask_sealed(core, m.Lookup(file_id=FID), source=("10.0.0.3", 1)).peers == [("seeder-1", 7000)]


def test_only_the_registering_address_may_heartbeat_or_unregister(tracker):
    ask(tracker, m.Register(port=7000, files=[ENTRY]), source=("10.0.0.1", 5555))
    stranger = ("10.0.0.2", 5555)  # another address
    assert ask(tracker, m.Heartbeat(txn=2, port=7000, host="10.0.0.1"), source=stranger).code == "forbidden"
    assert ask(tracker, m.Heartbeat(txn=2, port=7000), source=stranger) == m.ErrorReply(
        txn=2, code="unknown_seeder", message="register again"
    )  # its own 10.0.0.2:7000 is no holder
    assert ask(tracker, m.Unregister(port=7000, host="10.0.0.1"), source=stranger).code == "forbidden"
    assert ask(tracker, m.Lookup(file_id=FID)).peers == [("10.0.0.1", 7000)]
    # A restarted seeder (same address, a new socket) takes its entry over without waiting.
    restarted = ("10.0.0.1", 5556)
    assert ask(tracker, m.Register(port=7000, files=[ENTRY]), source=restarted).type == "ack"
    assert ask(tracker, m.Heartbeat(port=7000), source=restarted).type == "ack"
    tracker.expire(now=3.5)  # nothing but real beats kept it
    assert len(tracker.registry) == 0


def test_older_versions_hear_forbidden_as_malformed(tracker):
    raw = ask_raw(tracker, b'{"v":1,"txn":4,"type":"register","port":22,"host":"10.0.0.2"}')
    assert raw["v"] == 1 and raw["code"] == "malformed" and "address" in raw["message"]
    raw = ask_raw(tracker, b'{"v":2,"txn":4,"type":"register","port":22,"host":"10.0.0.2"}')
    assert raw["v"] == 2 and raw["code"] == "malformed"


def test_registry_caps_are_refused_as_full_and_counted_by_reason():
    registry = CollectorRegistry()
    holders = HolderRegistry(ttl=3.0, max_files_per_address=2)
    core = TrackerCore(holders, TrackerMetrics(registry, holders), interval=1.0, max_peers=2)
    core.prom = registry
    other = m.FileEntry(file_id="ef" * 32, name="other.bin", size=1, chunk_size=1)
    third = m.FileEntry(file_id="01" * 32, name="third.bin", size=1, chunk_size=1)
    assert ask(core, m.Register(port=7000, files=[ENTRY, other])).type == "ack"
    reply = ask(core, m.Register(port=7001, files=[third]))
    assert reply.code == "full" and "address" in reply.message
    assert metric(core, "p2p_tracker_refused_datagrams_total", reason="files_per_address") == 1
    assert metric(core, "p2p_tracker_registrations_total", result="rejected") == 1


def files_of(reply) -> list[str]:
    return [f.file_id for f in reply.files]


def test_the_file_list_is_paged_by_a_cursor_in_file_id_order():
    registry = CollectorRegistry()
    holders = HolderRegistry(ttl=3.0)
    core = TrackerCore(holders, TrackerMetrics(registry, holders), interval=1.0, max_peers=2)
    entries = [m.FileEntry(file_id=f"{n:064x}", name=f"f{n}.bin", size=1, chunk_size=1) for n in range(40, 0, -1)]
    ask(core, m.Register(port=7000, files=entries[:16]))
    ask(core, m.Register(port=7000, files=entries[16:32]))
    ask(core, m.Register(port=7000, files=entries[32:]))
    first = ask(core, m.ListFiles())
    assert first.total == 40 and files_of(first) == [f"{n:064x}" for n in range(1, 17)] and first.next == f"{16:064x}"
    second = ask(core, m.ListFiles(after=first.next))
    assert files_of(second) == [f"{n:064x}" for n in range(17, 33)] and second.next == f"{32:064x}"
    last = ask(core, m.ListFiles(after=second.next))
    assert files_of(last) == [f"{n:064x}" for n in range(33, 41)] and last.next is None
    # Versions 1 and 2 have no cursor: they get the first page and the total, as before.
    for version in (1, 2):
        raw = ask_raw(core, b'{"v":%d,"txn":1,"type":"list_files"}' % version)
        assert raw["v"] == version and raw["total"] == 40 and "next" not in raw and len(raw["files"]) == 16


def test_a_replayed_sealed_register_is_refused_however_many_datagrams_came_between():
    from p2p_shared.auth import Sealer

    registry = CollectorRegistry()
    holders = HolderRegistry(ttl=3.0)
    core = TrackerCore(holders, TrackerMetrics(registry, holders), 1.0, 50, sealer=Sealer(SECRET, max_nonces=1000))
    member, now, source = Sealer(SECRET), 1000.0, ("10.0.0.1", 5555)
    conn = m.decode(member.open(core.handle(member.seal(m.encode_request(m.Connect()), now), source, now), now)).conn
    register = member.seal(m.encode(m.Register(conn=conn, port=7000, files=[ENTRY])), now)
    assert m.decode(member.open(core.handle(register, source, now), now)).type == "ack"
    core.handle(member.seal(m.encode(m.Unregister(conn=conn, port=7000)), now), source, now)
    for _ in range(1100):  # more than the memory holds, within the timestamp window
        core.handle(member.seal(m.encode(m.Lookup(conn=conn, file_id=FID)), now), source, now + 1)
    assert core.handle(register, source, now + 2) is None
    assert len(holders) == 0
    assert registry.get_sample_value("p2p_tracker_refused_datagrams_total", {"reason": "nonces_full"}) >= 100
    # Once the window has passed, the memory empties and members are served again.
    later = now + 65
    assert core.handle(member.seal(m.encode_request(m.Connect()), later), source, later) is not None


UNPROVEN = [
    b'{"type":"connect"}',
    b'{"type":"list_files"}',
    b'{"type":"lookup","name":"demo.bin"}',
    b'{"v":1,"txn":7,"type":"connect"}',
    b'{"v":2,"txn":4294967295,"type":"connect"}',
    b'{"v":9,"txn":1,"type":"connect"}',
    b'{"v":3,"txn":3,"type":"register","port":7000,"conn":1}',
    b'{"v":3,"txn":3,"type":"heartbeat","port":7000,"conn":12345678901234}',
]


@pytest.mark.parametrize("request_bytes", UNPROVEN)
def test_an_unproven_address_gets_nothing_larger_than_it_sent(tracker, request_bytes):
    answer = tracker.handle(request_bytes, ("10.9.9.9", 1), 0.0)
    assert answer is None or len(answer) <= len(request_bytes)


def test_a_padded_connect_is_answered_and_the_short_ones_counted(tracker):
    padded = m.encode_request(m.Connect(txn=2**32 - 1))
    answer = tracker.handle(padded, ("10.9.9.9", 1), 0.0)
    assert m.decode(answer).type == "connected" and len(answer) <= len(padded)
    assert tracker.handle(m.encode(m.Connect(txn=5)), ("10.9.9.9", 1), 0.0) is None
    assert metric(tracker, "p2p_tracker_refused_datagrams_total", reason="unpadded") == 1
    # An unknown version still hears which versions the tracker speaks, when it asked with room for it.
    newer = b'{"v":9,"txn":1,"type":"connect"}'.ljust(200)
    assert m.decode(tracker.handle(newer, ("10.9.9.9", 1), 0.0)).code == "unsupported_version"


def test_a_list_files_datagram_costs_the_same_work_with_20_or_20000_files():
    # Issue 12, item 16: the tracker sorted every file on every call (80,283 Python calls at
    # 20,000 files, 363 at 20). Counted work, not time: the count does not drift with the machine.
    def handled(files: int):
        holders = crowded(files)
        core = TrackerCore(holders, TrackerMetrics(CollectorRegistry(), holders), interval=1.0, max_peers=2)
        conn = core.ids.issue("10.0.0.1", 0.0)
        request = m.encode(m.ListFiles(conn=conn, after=f"{files // 2:064x}"))
        return lambda: core.handle(request, ("10.0.0.1", 1), 0.0)

    small, big = handled(20), handled(20_000)
    assert m.decode(big()).next is not None and len(m.decode(big()).files) == 16
    assert python_calls(big) <= 2 * python_calls(small) + 50
