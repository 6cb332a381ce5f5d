"""Tracker datagrams: round trips, exact JSON, typed errors for anything malformed."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p_shared import messages as m
from p2p_shared.errors import LocalProtocolError, RemoteProtocolError
from p2p_shared.limits import MAX_DATAGRAM, MAX_FILES_PER_REGISTER

FID = "ab" * 32
ENTRY = m.FileEntry(file_id=FID, name="demo.bin", size=10, chunk_size=4)

EXAMPLES = [
    m.Register(txn=1, port=7000, files=[ENTRY]),
    m.Register(txn=2, port=7000, host="seeder-3", files=[]),
    m.Heartbeat(txn=3, port=7000),
    m.Unregister(txn=4, port=7000, host="10.0.0.5"),
    m.Lookup(txn=5, name="demo.bin"),
    m.Lookup(txn=6, file_id=FID),
    m.ListFiles(txn=7),
    m.Ack(txn=8, interval=30),
    m.Peers(txn=9, file=ENTRY, peers=[("127.0.0.1", 7001), ("seeder-2", 7000)]),
    m.Peers(txn=10),
    m.Files(txn=11, files=[m.FileSummary(**ENTRY.model_dump(), seeders=3)], total=1),
    m.ErrorReply(txn=12, code="unknown_seeder", message="register again"),
    # Version 2: partial holders.
    m.Register(txn=13, port=7002, files=[ENTRY], partial=True),
    m.Lookup(txn=14, file_id=FID, port=7002),
    m.Lookup(txn=15, name="demo.bin", port=7002, host="leecher-4"),
    m.Peers(txn=16, file=ENTRY, peers=[("seeder-2", 7000)], partial=[("10.0.0.9", 7002)]),
    m.Peers(txn=17, partial=[]),
    m.Files(txn=18, files=[m.FileSummary(**ENTRY.model_dump(), seeders=3, partial=5)], total=1),
    # Version 1 messages, as version 1 clients send them and the tracker answers them.
    m.Register(v=1, txn=19, port=7000, files=[ENTRY]),
    m.Lookup(v=1, txn=20, name="demo.bin"),
    m.Peers(v=1, txn=21, file=ENTRY, peers=[("127.0.0.1", 7001)]),
    m.Files(v=1, txn=22, files=[m.FileSummary(**ENTRY.model_dump(), seeders=3)], total=1),
    # Version 4: a holder drops files and stays registered.
    m.Drop(txn=23, port=7000, files=[FID]),
    m.Drop(txn=24, port=7000, host="10.0.0.5", files=[FID, "cd" * 32]),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda x: x.type)
def test_round_trip(message):
    assert m.decode(m.encode(message)) == message


def test_exact_json():
    # Version 3, as version 3 clients send it and hear it: the same bytes as before version 4.
    assert m.encode(m.Heartbeat(v=3, txn=3, port=7000)) == b'{"v":3,"txn":3,"type":"heartbeat","port":7000}'
    assert json.loads(m.encode(m.Lookup(v=3, txn=5, name="x"))) == {"v": 3, "txn": 5, "type": "lookup", "name": "x"}
    assert json.loads(m.encode(m.Lookup(v=3, txn=5, name="x", port=7002))) == {
        "v": 3, "txn": 5, "type": "lookup", "name": "x", "port": 7002
    }
    assert m.encode(m.Register(v=3, txn=1, port=7002, partial=True)) == (
        b'{"v":3,"txn":1,"type":"register","port":7002,"files":[],"partial":true}'
    )
    assert m.encode(m.ListFiles(v=3, txn=2, after="ab" * 32)) == (
        b'{"v":3,"txn":2,"type":"list_files","after":"%s"}' % (b"ab" * 32)
    )
    assert m.encode(m.ErrorReply(v=3, txn=4, code="connect_first")) == b'{"v":3,"txn":4,"type":"error","code":"connect_first"}'
    # Messages are version 5 unless told otherwise.
    assert m.encode(m.Heartbeat(txn=3, port=7000)) == b'{"v":5,"txn":3,"type":"heartbeat","port":7000}'
    assert m.encode(m.Drop(txn=6, port=7000, files=[FID])) == (
        b'{"v":5,"txn":6,"type":"drop","port":7000,"files":["%s"]}' % FID.encode()
    )
    assert m.encode(m.Claim(txn=7, key="sha256:ab", port=7000)) == b'{"v":5,"txn":7,"type":"claim","key":"sha256:ab","port":7000,"release":false}'
    assert m.encode(m.Lease(txn=7, holder=("10.0.0.1", 7000), mine=True, ttl=9.5)) == (
        b'{"v":5,"txn":7,"type":"lease","holder":["10.0.0.1",7000],"mine":true,"ttl":9.5}'
    )
    assert m.encode(m.Drop(v=4, txn=7, conn=9, port=7000, host="peer-1", files=[FID])) == (
        b'{"v":4,"txn":7,"conn":9,"type":"drop","port":7000,"host":"peer-1","files":["%s"]}' % FID.encode()
    )


def test_peers_travel_as_host_port_pairs():
    data = m.encode(m.Peers(v=3, txn=1, peers=[("10.0.0.1", 7000)], partial=[("10.0.0.2", 7002)]))
    assert data == b'{"v":3,"txn":1,"type":"peers","peers":[["10.0.0.1",7000]],"partial":[["10.0.0.2",7002]]}'


def test_version_1_answers_have_only_version_1_keys():
    assert m.encode(m.Peers(v=1, txn=1, peers=[("10.0.0.1", 7000)])) == (
        b'{"v":1,"txn":1,"type":"peers","peers":[["10.0.0.1",7000]]}'
    )
    files = m.Files(v=1, files=[m.FileSummary(**ENTRY.model_dump(), seeders=3)], total=1)
    assert set(json.loads(m.encode(files))["files"][0]) == {"file_id", "name", "size", "chunk_size", "seeders"}


def test_version_1_datagrams_decode_without_version_2_fields():
    register = m.decode(b'{"v":1,"txn":1,"type":"register","port":7000,"files":[]}')
    assert register.v == 1 and register.partial is False
    lookup = m.decode(b'{"v":1,"txn":2,"type":"lookup","name":"demo.bin"}')
    assert lookup.v == 1 and lookup.port is None and lookup.host is None


def test_largest_registration_fits_a_datagram():
    files = [
        m.FileEntry(file_id=f"{i:064x}", name="é" * 127, size=2**62, chunk_size=16 << 20)
        for i in range(MAX_FILES_PER_REGISTER)
    ]
    data = m.encode(m.Register(txn=2**32 - 1, port=65535, host="h" * 253, files=files))
    assert len(data) <= MAX_DATAGRAM


BAD = [
    b"",
    b"not json",
    b"[]",
    b'{"type":"nonsense"}',
    b'{"type":"heartbeat"}',  # no port
    b'{"type":"heartbeat","port":0}',
    b'{"type":"heartbeat","port":-5}',
    b'{"type":"heartbeat","port":70000}',
    b'{"type":"heartbeat","port":"7000x"}',
    b'{"type":"heartbeat","port":7000,"extra":1}',
    b'{"type":"heartbeat","port":7000,"txn":99999999999999999999999}',
    b'{"type":"heartbeat","port":7000,"host":"a b"}',
    b'{"type":"lookup"}',
    b'{"type":"lookup","name":"a","file_id":"' + b"ab" * 32 + b'"}',
    b'{"type":"lookup","name":"../etc/passwd"}',
    b'{"type":"lookup","name":"a/b"}',
    b'{"type":"lookup","name":".."}',
    b'{"type":"lookup","name":"a\\u0000b"}',
    b'{"type":"lookup","name":"' + b"x" * 3000 + b'"}',
    b'{"type":"lookup","file_id":"xyz"}',
    b'{"type":"register","port":1,"files":[{"file_id":"' + b"ab" * 32 + b'","name":"a","size":-1,"chunk_size":4}]}',
    b'{"type":"register","port":1,"files":[{"file_id":"' + b"ab" * 32 + b'","name":"a","size":1,"chunk_size":0}]}',
    b'{"type":"register","port":1,"files":[{"file_id":"' + b"ab" * 32 + b'","name":"a","size":1e400,"chunk_size":4}]}',
    b'{"type":"register","port":1,"files":[' + b",".join([b'{"file_id":"' + b"ab" * 32 + b'","name":"a","size":1,"chunk_size":4}'] * 17) + b"]}",
    b"{" * 5000,
    b" " * (MAX_DATAGRAM + 1),
    # Version 2 fields: their types, and never in a version 1 message.
    b'{"type":"register","port":1,"partial":"yes"}',
    b'{"type":"register","port":1,"partial":1}',
    b'{"v":1,"type":"register","port":1,"partial":true}',
    b'{"type":"lookup","name":"a","port":0}',
    b'{"type":"lookup","name":"a","port":7000,"host":"a b"}',
    b'{"v":1,"type":"lookup","name":"a","port":7000}',
    b'{"v":1,"type":"lookup","name":"a","host":"leecher-1"}',
    b'{"type":"peers","partial":[["a",0]]}',
    b'{"type":"peers","partial":[["a"]]}',
    b'{"type":"peers","partial":[' + b",".join([b'["a",1]'] * 51) + b"]}",
    b'{"v":1,"type":"peers","peers":[],"partial":[]}',
    b'{"type":"files","files":[{"file_id":"' + b"ab" * 32 + b'","name":"a","size":1,"chunk_size":4,"seeders":1,"partial":-1}]}',
    b'{"v":1,"type":"files","files":[{"file_id":"' + b"ab" * 32 + b'","name":"a","size":1,"chunk_size":4,"seeders":1,"partial":0}]}',
    # Version 4: drop, its bounds, and never in an older message.
    b'{"v":3,"type":"drop","port":1,"files":["' + b"ab" * 32 + b'"]}',
    b'{"v":2,"type":"drop","port":1,"files":["' + b"ab" * 32 + b'"]}',
    b'{"v":1,"type":"drop","port":1,"files":["' + b"ab" * 32 + b'"]}',
    b'{"type":"drop","port":1,"files":[]}',
    b'{"type":"drop","port":1}',
    b'{"type":"drop","files":["' + b"ab" * 32 + b'"]}',
    b'{"type":"drop","port":0,"files":["' + b"ab" * 32 + b'"]}',
    b'{"type":"drop","port":1,"host":"a b","files":["' + b"ab" * 32 + b'"]}',
    b'{"type":"drop","port":1,"files":["' + b"AB" * 32 + b'"]}',
    b'{"type":"drop","port":1,"files":["xyz"]}',
    b'{"type":"drop","port":1,"files":"' + b"ab" * 32 + b'"}',
    b'{"type":"drop","port":1,"files":[{"file_id":"' + b"ab" * 32 + b'","name":"a","size":1,"chunk_size":4}]}',
    b'{"type":"drop","port":1,"files":["' + b"ab" * 32 + b'"],"partial":true}',
    b'{"type":"drop","port":1,"files":[' + b",".join([b'"' + b"ab" * 32 + b'"'] * 17) + b"]}",
]


@pytest.mark.parametrize("data", BAD)
def test_malformed_datagrams_are_typed_errors(data):
    with pytest.raises(RemoteProtocolError):
        m.decode(data)


def test_encode_refuses_oversized_answers():
    huge = m.ErrorReply.model_construct(code="full", message="x" * (MAX_DATAGRAM + 10), v=1, txn=0, type="error")
    with pytest.raises(LocalProtocolError):
        m.encode(huge)


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzz_any_datagram_decodes_or_is_a_typed_error(data):
    try:
        m.decode(data)
    except RemoteProtocolError:
        pass


@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["register", "heartbeat", "drop", "lookup", "ack", "peers", "files", "error"])},
        optional={
            "port": st.integers(-(2**70), 2**70) | st.text(max_size=5) | st.none(),
            "host": st.text(max_size=10) | st.none(),
            "name": st.text(max_size=20),
            "txn": st.integers(-(2**40), 2**40),
            "v": st.integers(-3, 300) | st.sampled_from([1, 2]),
            "partial": st.booleans() | st.none() | st.integers(-2, 2) | st.lists(
                st.lists(st.integers(-1, 70000) | st.text(max_size=6), max_size=3), max_size=3
            ),
            "peers": st.lists(st.lists(st.integers(-1, 70000) | st.text(max_size=6), max_size=3), max_size=3),
            "files": st.lists(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8)), max_size=3),
        },
    )
)
def test_fuzz_json_objects_of_the_wrong_shape_are_typed_errors(obj):
    try:
        m.decode(json.dumps(obj).encode())
    except RemoteProtocolError:
        pass


def test_datagrams_of_exactly_the_maximum_size_pass_both_ways():
    connect = m.encode(m.Connect(txn=1))
    assert m.decode(connect + b" " * (MAX_DATAGRAM - len(connect))) == m.Connect(txn=1)
    def reply(text: str) -> m.ErrorReply:  # longer than a real reply's message may be, to reach the limit
        return m.ErrorReply.model_construct(code="full", message=text, v=1, txn=0, type="error")

    base = len(m.encode(reply("x"))) - 1  # (an empty text is left out altogether)
    assert len(m.encode(reply("x" * (MAX_DATAGRAM - base)))) == MAX_DATAGRAM


def test_a_malformed_datagram_says_which_field_is_wrong():
    with pytest.raises(RemoteProtocolError, match=r"^malformed datagram: heartbeat\.port: Input should be greater"):
        m.decode(b'{"type":"heartbeat","v":1,"txn":0,"port":0}')


HOSTS = st.sampled_from(["10.0.0.1", "seeder-2", "a b", "", "h" * 254])
PAIRS = st.lists(st.tuples(HOSTS, st.integers(-1, 70000)), max_size=4)


@given(
    st.sampled_from(["register", "lookup", "peers", "files"]),
    st.sampled_from([1, 2]),
    st.fixed_dictionaries(
        {},
        optional={
            "partial": st.booleans() | st.integers(0, 3) | PAIRS,
            "port": st.integers(0, 70000) | st.none(),
            "host": HOSTS | st.none(),
            "peers": PAIRS,
        },
    ),
)
def test_fuzz_a_version_1_message_never_carries_version_2_fields(kind, version, fields):
    base = {"register": {"port": 7000}, "lookup": {"name": "demo.bin"}, "peers": {}, "files": {}}[kind]
    try:
        message = m.decode(json.dumps({"type": kind, "v": version, **base, **fields}).encode())
    except RemoteProtocolError:
        return
    assert m.decode(m.encode(message)) == message
    if version == 1:
        assert getattr(message, "partial", None) in (None, False)
        assert getattr(message, "port", None) is None or kind == "register"
        assert kind != "lookup" or message.host is None


# Issue 12, item 20: no control or bidi formatting character in a name.

CONTROL = ["\x7f", "\x80", "\x9b", "\x9f", "\u061c", "\u200e", "\u200f", "\u2028", "\u2029",
           "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]


@pytest.mark.parametrize("char", CONTROL, ids=lambda c: f"U+{ord(c):04X}")
def test_names_with_a_unicode_control_or_bidi_character_are_refused(char):
    with pytest.raises(RemoteProtocolError):
        m.decode(json.dumps({"type": "lookup", "name": f"a{char}b.bin"}).encode())
    with pytest.raises(RemoteProtocolError):  # raw UTF-8 as well as \u escapes
        m.decode(json.dumps({"type": "lookup", "name": f"a{char}b.bin"}, ensure_ascii=False).encode())


@pytest.mark.parametrize("name", ["café.bin", "日本語.txt", "👩\u200d💻.png", "a b (1).tar.gz", "x" * 255])
def test_ordinary_unicode_names_pass(name):
    assert m.decode(json.dumps({"type": "lookup", "name": name}).encode()).name == name


# Version 3: a cursor through the file list, and `forbidden`.


def test_version_3_file_list_cursor_round_trips_and_is_version_3_only():
    assert m.decode(m.encode(m.ListFiles(txn=1, after=FID))) == m.ListFiles(txn=1, after=FID)
    files = m.Files(txn=2, files=[m.FileSummary(**ENTRY.model_dump(), seeders=1, partial=0)], total=20, next=FID)
    assert m.decode(m.encode(files)) == files
    assert m.decode(m.encode(m.ErrorReply(code="forbidden", message="no"))).code == "forbidden"
    for bad in (
        b'{"v":2,"type":"list_files","after":"%s"}' % FID.encode(),
        b'{"v":1,"type":"files","files":[],"next":"%s"}' % FID.encode(),
        b'{"v":2,"type":"error","code":"forbidden"}',
        b'{"type":"list_files","after":"xyz"}',
    ):
        with pytest.raises(RemoteProtocolError):
            m.decode(bad)


def test_requests_are_padded_to_their_longest_unproven_answer():
    padded = m.encode_request(m.Connect(txn=1))
    assert m.decode(padded) == m.Connect(txn=1) and padded.rstrip(b" ") == m.encode(m.Connect(txn=1))
    longest = m.encode(m.Connected(txn=2**32 - 1, conn=2**64 - 1))
    assert len(padded) >= len(longest)
    proven = m.encode_request(m.ListFiles(txn=1, conn=1))
    assert len(proven) >= len(m.encode(m.ErrorReply(txn=2**32 - 1, code="connect_first")))
    big = m.Register(txn=1, conn=1, port=7000, files=[ENTRY])
    assert m.encode_request(big) == m.encode(big)  # long enough already


def test_unavailable_is_a_version_3_error_code():
    from p2p_shared import messages as m

    assert m.decode(b'{"v":3,"txn":1,"type":"error","code":"unavailable"}').code == "unavailable"
    with pytest.raises(RemoteProtocolError):
        m.decode(b'{"v":2,"txn":1,"type":"error","code":"unavailable"}')


# Version 4: a holder drops files without unregistering.


def test_the_tracker_speaks_versions_1_to_4():
    from p2p_shared import TRACKER_VERSION

    assert TRACKER_VERSION == 5 and m.TRACKER_VERSIONS == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_a_drop_older_than_version_4_is_malformed(version):
    data = b'{"v":%d,"txn":1,"type":"drop","port":7000,"files":["%s"]}' % (version, FID.encode())
    with pytest.raises(RemoteProtocolError, match="drop needs protocol version 4"):
        m.decode(data)
    assert m.decode(data.replace(b'"v":%d' % version, b'"v":4')) == m.Drop(v=4, txn=1, port=7000, files=[FID])


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_a_claim_older_than_version_5_is_malformed(version):
    data = b'{"v":%d,"txn":1,"type":"claim","key":"sha256:%s","port":7000}' % (version, FID.encode())
    with pytest.raises(RemoteProtocolError, match="claim needs protocol version 5"):
        m.decode(data)
    assert m.decode(data.replace(b'"v":%d' % version, b'"v":5')) == m.Claim(txn=1, key=f"sha256:{FID}", port=7000)


@pytest.mark.parametrize("key", ["", "a b", "x" * 129, "a/b", "sha256:\u00e9"])
def test_a_lease_key_is_short_and_plain(key):
    with pytest.raises(RemoteProtocolError, match="key"):
        m.decode(json.dumps({"type": "claim", "key": key, "port": 1}).encode())


def test_a_drop_names_1_to_max_files_per_register_files():
    most = [f"{i:064x}" for i in range(MAX_FILES_PER_REGISTER)]
    largest = m.Drop(txn=2**32 - 1, conn=2**64 - 1, port=65535, host="h" * 253, files=most)
    data = m.encode(largest)
    assert m.decode(data) == largest and len(data) <= MAX_DATAGRAM
    assert m.decode(m.encode(m.Drop(port=1, files=[FID, FID]))).files == [FID, FID]  # repeats: the tracker ignores them
    with pytest.raises(RemoteProtocolError, match="at most 16"):
        m.decode(json.dumps({"type": "drop", "port": 1, "files": most + [FID]}).encode())


def test_a_drop_is_padded_like_every_request():
    padded = m.encode_request(m.Drop(txn=1, port=7000, files=[FID]))
    assert m.decode(padded) == m.Drop(txn=1, port=7000, files=[FID])
    assert len(padded) >= len(m.encode(m.ErrorReply(v=4, txn=2**32 - 1, code="connect_first")))
