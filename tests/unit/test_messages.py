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
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda x: x.type)
def test_round_trip(message):
    assert m.decode(m.encode(message)) == message


def test_exact_json():
    assert m.encode(m.Heartbeat(txn=3, port=7000)) == b'{"v":1,"txn":3,"type":"heartbeat","port":7000}'
    assert json.loads(m.encode(m.Lookup(txn=5, name="x"))) == {"v": 1, "txn": 5, "type": "lookup", "name": "x"}


def test_peers_travel_as_host_port_pairs():
    data = m.encode(m.Peers(txn=1, peers=[("10.0.0.1", 7000)]))
    assert data == b'{"v":1,"txn":1,"type":"peers","peers":[["10.0.0.1",7000]]}'


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
        {"type": st.sampled_from(["register", "heartbeat", "lookup", "ack", "peers", "files", "error"])},
        optional={
            "port": st.integers(-(2**70), 2**70) | st.text(max_size=5),
            "name": st.text(max_size=20),
            "txn": st.integers(-(2**40), 2**40),
            "v": st.integers(-3, 300),
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

    base = len(m.encode(reply("")))
    assert len(m.encode(reply("x" * (MAX_DATAGRAM - base)))) == MAX_DATAGRAM


def test_a_malformed_datagram_says_which_field_is_wrong():
    with pytest.raises(RemoteProtocolError, match=r"^malformed datagram: heartbeat\.port: Input should be greater"):
        m.decode(b'{"type":"heartbeat","v":1,"txn":0,"port":0}')
