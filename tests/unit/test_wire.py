"""Peer frames: exact bytes, fed whole, byte by byte and with trailing data; bad input typed."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p_shared import wire
from p2p_shared.errors import LocalProtocolError, RemoteProtocolError
from p2p_shared.limits import MAX_CHUNK_SIZE, MAX_CHUNKS

FID = bytes(range(32))
FID_HEX = FID.hex()

# (event, exact bytes on the wire). Expected bytes are spelled out, not produced by encode().
TABLE = [
    (wire.Hello(1), b"\x01\x00\x00\x00\x04" + b"\x00\x01\x00\x00"),
    (wire.Hello(1, wire.FLAG_AUTH, b"N" * 16), b"\x01\x00\x00\x00\x14" + b"\x00\x01\x00\x01" + b"N" * 16),
    (wire.Auth(b"P" * 32), b"\x09\x00\x00\x00\x20" + b"P" * 32),
    (wire.GetManifest(FID), b"\x02\x00\x00\x00\x20" + FID),
    (wire.ManifestData(FID, b"MANI"), b"\x03\x00\x00\x00\x24" + FID + b"MANI"),
    (wire.GetHave(FID), b"\x04\x00\x00\x00\x20" + FID),
    (wire.Have(FID, 10, b"\xff\xc0"), b"\x05\x00\x00\x00\x26" + FID + b"\x00\x00\x00\x0a\xff\xc0"),
    (wire.Request(FID, 258), b"\x06\x00\x00\x00\x24" + FID + b"\x00\x00\x01\x02"),
    (wire.Hello(1, wire.FLAG_ANNOUNCE), b"\x01\x00\x00\x00\x04" + b"\x00\x01\x00\x02"),
    (wire.Announce(FID, (3, 258)), b"\x0a\x00\x00\x00\x28" + FID + b"\x00\x00\x00\x03\x00\x00\x01\x02"),
    (wire.Decline(FID, (7,)), b"\x0b\x00\x00\x00\x24" + FID + b"\x00\x00\x00\x07"),
    (
        wire.Error(wire.ErrorCode.BAD_INDEX, "no", FID, 7),
        b"\x08\x00\x00\x00\x27" + b"\x02" + FID + b"\x00\x00\x00\x07" + b"no",
    ),
]


def decode_all(data: bytes, step: int | None = None) -> list:
    reader = wire.FrameReader()
    if step is None:
        reader.receive_data(data)
    else:
        for i in range(0, len(data), step):
            reader.receive_data(data[i : i + step])
    events = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize(("event", "data"), TABLE, ids=[type(e).__name__ for e, _ in TABLE])
def test_encode_gives_exact_bytes(event, data):
    assert wire.encode(event) == data


@pytest.mark.parametrize(("event", "data"), TABLE, ids=[type(e).__name__ for e, _ in TABLE])
@pytest.mark.parametrize("step", [None, 1, 3])
def test_decode_whole_and_in_pieces(event, data, step):
    assert decode_all(data, step) == [event]


def test_trailing_data_is_the_next_frame_not_lost():
    data = b"".join(d for _, d in TABLE)
    assert decode_all(data) == [e for e, _ in TABLE]
    reader = wire.FrameReader()
    reader.receive_data(TABLE[0][1] + TABLE[1][1][:3])
    assert reader.next_event() == TABLE[0][0]
    assert reader.next_event() is None
    assert not reader.at_frame_boundary
    reader.receive_data(TABLE[1][1][3:])
    assert reader.next_event() == TABLE[1][0]
    assert reader.at_frame_boundary


def test_chunk_payload_lands_in_the_allocated_buffer():
    handed_out = []

    def allocate(size):
        buffer = bytearray(100)
        handed_out.append((size, buffer))
        return buffer

    payload = bytes(range(50))
    data = b"\x07\x00\x00\x00\x56" + FID + b"\x00\x00\x00\x09" + payload
    assert wire.encode(wire.Chunk(FID, 9, memoryview(payload), bytearray())) == data
    reader = wire.FrameReader(allocate)
    for i in range(len(data)):  # byte by byte: the reader must never over-read a frame
        view = reader.get_buffer()
        assert len(view) >= 1
        view[0] = data[i]
        reader.buffer_updated(1)
    chunk = reader.next_event()
    assert isinstance(chunk, wire.Chunk)
    assert (chunk.file_id, chunk.index, bytes(chunk.data)) == (FID, 9, payload)
    assert handed_out == [(50, chunk.buffer)]
    assert chunk.data.obj is chunk.buffer  # no copy between the socket buffer and the event


def test_empty_chunk():
    events = decode_all(wire.chunk_header(FID, 3, 0))
    assert len(events) == 1 and events[0].index == 3 and len(events[0].data) == 0


def test_have_helpers():
    have = wire.Have.of(FID, 10, [0, 9])
    assert have.bitfield == b"\x80\x40"
    assert have.indices() == {0, 9}
    assert wire.Have.full(FID, 10).bitfield == b"\xff\xc0"
    assert not have.has(10) and not have.has(-1)


BAD = [
    ("unknown type", b"\x63\x00\x00\x00\x00"),
    ("hello with a short nonce", b"\x01\x00\x00\x00\x05" + bytes(5)),
    ("hello too long", b"\x01\x00\x00\x00\x15" + bytes(21)),
    ("auth too short", b"\x09\x00\x00\x00\x1f" + bytes(31)),
    ("request too short", b"\x06\x00\x00\x00\x10" + bytes(16)),
    ("huge length", b"\x03\xff\xff\xff\xff"),
    ("chunk over limit", struct.pack("!BI", 7, 36 + MAX_CHUNK_SIZE + 1)),
    ("have count mismatch", b"\x05\x00\x00\x00\x25" + FID + b"\x00\x00\x00\x10\xff"),
    ("have spare bits set", b"\x05\x00\x00\x00\x25" + FID + b"\x00\x00\x00\x04\xff"),
    ("unknown error code", b"\x08\x00\x00\x00\x25" + b"\x63" + FID + bytes(4)),
]


@pytest.mark.parametrize(("why", "data"), BAD, ids=[w for w, _ in BAD])
def test_malformed_frames_raise_typed_errors(why, data):
    reader = wire.FrameReader()
    with pytest.raises(RemoteProtocolError):
        reader.receive_data(data)
    with pytest.raises(LocalProtocolError):  # a broken stream stays broken
        reader.get_buffer()


def test_huge_length_is_refused_before_allocation():
    allocated = []
    reader = wire.FrameReader(lambda n: allocated.append(n) or bytearray(n), max_payload=1024)
    with pytest.raises(RemoteProtocolError):
        reader.receive_data(struct.pack("!BI", 7, 36 + 1025))
    assert allocated == []


def test_allocator_may_refuse_a_payload():
    def refuse(size):
        raise RemoteProtocolError("not asked for")

    reader = wire.FrameReader(refuse)
    with pytest.raises(RemoteProtocolError, match="not asked"):
        reader.receive_data(wire.chunk_header(FID, 0, 10))


def test_encode_refuses_bad_arguments():
    with pytest.raises(LocalProtocolError):
        wire.encode(wire.Request(b"short", 0))
    with pytest.raises(LocalProtocolError):
        wire.chunk_header(FID, 0, MAX_CHUNK_SIZE + 1)


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=7))
def test_fuzz_any_bytes_give_events_or_a_typed_error(data, step):
    reader = wire.FrameReader(max_payload=64)
    try:
        for i in range(0, len(data), step):
            reader.receive_data(data[i : i + step])
    except RemoteProtocolError:
        return
    while reader.next_event() is not None:
        pass


@pytest.mark.parametrize(
    "frame",
    [
        b"\x0a\x00\x00\x00\x20" + FID,  # no index at all
        b"\x0a\x00\x00\x00\x23" + FID + b"\x00\x00\x01",  # not whole indices
        b"\x0a\x00\x00\x10\x24",  # more indices than one frame may carry: refused by its length
    ],
)
def test_bad_announce_frames_are_refused(frame):
    reader = wire.FrameReader()
    with pytest.raises(RemoteProtocolError):
        reader.receive_data(frame + bytes(64))


def test_announce_refuses_to_encode_nothing_or_too_much():
    for indices in ((), tuple(range(wire.MAX_ANNOUNCED + 1))):
        with pytest.raises(LocalProtocolError):
            wire.encode(wire.Announce(FID, indices))


def test_have_bitfields_at_byte_boundaries():
    have = wire.Have.of(FID, 9, [0, 8])
    assert have == wire.Have(FID, 9, b"\x80\x80")  # 9 chunks take two bytes
    assert wire.Have.full(FID, 8) == wire.Have(FID, 8, b"\xff")
    assert not wire.Have.full(FID, 8).has(8)  # one past the end, no byte read past it
    assert not wire.Have.of(FID, 8, [7]).has(0)  # only bit 7 (value 1) is set
    assert wire.Have.of(FID, 8, [7]).indices() == {7}
    reader = wire.FrameReader()
    reader.receive_data(wire.encode(have))
    assert reader.next_event() == have


@pytest.mark.parametrize("last_byte", [b"\x01", b"\x02"], ids=["lowest-spare-bit", "second-spare-bit"])
def test_have_bits_past_the_chunk_count_are_refused(last_byte):
    body = FID + struct.pack("!I", 6) + last_byte  # 6 chunks: the two low bits are spare
    reader = wire.FrameReader()
    with pytest.raises(RemoteProtocolError, match="past its chunk count"):
        reader.receive_data(struct.pack("!BI", 5, len(body)) + body)


def test_have_of_the_maximum_chunk_count_is_accepted():
    have = wire.Have.full(FID, MAX_CHUNKS)
    reader = wire.FrameReader()
    reader.receive_data(wire.encode(have))
    assert reader.next_event() == have


def test_error_text_that_is_not_utf8_is_replaced_not_refused():
    body = b"\x02" + FID + b"\x00\x00\x00\x07" + b"bad \xff text"
    reader = wire.FrameReader()
    reader.receive_data(struct.pack("!BI", 8, len(body)) + body)
    assert reader.next_event() == wire.Error(wire.ErrorCode.BAD_INDEX, "bad \ufffd text", FID, 7)


def test_chunk_header_of_the_largest_chunk_is_allowed():
    header = wire.chunk_header(FID, 1, MAX_CHUNK_SIZE)
    assert header == struct.pack("!BI", 7, 36 + MAX_CHUNK_SIZE) + FID + b"\x00\x00\x00\x01"
    with pytest.raises(LocalProtocolError):
        wire.chunk_header(FID, 1, MAX_CHUNK_SIZE + 1)


def test_manifest_frames_are_bounded_by_the_largest_manifest():
    # The file id, then a manifest: 19-byte header, a name (1020 bytes allowed here), 2**20 digests.
    largest = 32 + 19 + 1020 + (1 << 20) * 32
    reader = wire.FrameReader()
    reader.receive_data(struct.pack("!BI", 3, largest))  # the header alone is accepted
    reader = wire.FrameReader()
    with pytest.raises(RemoteProtocolError, match="out of bounds"):
        reader.receive_data(struct.pack("!BI", 3, largest + 1))


def test_after_a_chunk_the_reader_is_at_a_frame_boundary_and_reads_on():
    reader = wire.FrameReader()
    reader.receive_data(wire.chunk_header(FID, 1, 3) + b"abc")
    assert reader.at_frame_boundary
    reader.receive_data(wire.chunk_header(FID, 2, 2) + b"de" + wire.encode(wire.Request(FID, 5)))
    first, second, request = (reader.next_event() for _ in range(3))
    assert (first.index, bytes(first.data), second.index, bytes(second.data)) == (1, b"abc", 2, b"de")
    assert request == wire.Request(FID, 5)


@pytest.mark.parametrize("kind", sorted(set(wire.FrameType) - wire.SERVER_HANDSHAKE))
def test_before_the_handshake_a_server_refuses_other_frames_by_their_header(kind):
    allocated = []
    reader = wire.FrameReader(lambda n: allocated.append(n) or bytearray(n), max_payload=0, accept=wire.SERVER_HANDSHAKE)
    with pytest.raises(RemoteProtocolError, match=f"unexpected {kind.name} frame"):
        reader.receive_data(wire.FRAME_HEADER.pack(kind, 32 << 20))  # five bytes claiming 32 MiB
    assert allocated == []


def test_frames_a_side_never_receives_are_refused_after_the_handshake_too():
    server = wire.FrameReader(max_payload=0, accept=wire.SERVER_RECEIVES)
    with pytest.raises(RemoteProtocolError, match="unexpected MANIFEST frame"):
        server.receive_data(wire.manifest_header(bytes(32), 1 << 20))
    client = wire.FrameReader(accept=wire.CLIENT_RECEIVES)
    with pytest.raises(RemoteProtocolError, match="unexpected REQUEST frame"):
        client.receive_data(wire.encode(wire.Request(bytes(32), 1)))


def test_receive_frame_stops_at_each_frame_so_the_accepted_set_can_widen_between():
    fid = bytes(32)
    stream = memoryview(wire.encode(wire.Hello(1)) + wire.encode(wire.Have.of(fid, 9, [3])))
    reader = wire.FrameReader(max_payload=0, accept=wire.SERVER_HANDSHAKE)
    taken = reader.receive_frame(stream)
    assert taken == len(wire.encode(wire.Hello(1))) and isinstance(reader.next_event(), wire.Hello)
    reader.accept = wire.SERVER_RECEIVES  # the handshake is done
    assert reader.receive_frame(stream[taken:]) == len(stream) - taken
    assert set(reader.next_event().indices()) == {3}


def test_a_manifest_header_and_its_body_are_one_manifest_frame():
    fid, body = bytes(range(32)), b"manifest bytes"
    assert wire.manifest_header(fid, len(body)) + body == wire.encode(wire.ManifestData(fid, body))


@given(st.binary(max_size=300), st.sampled_from(["server-handshake", "server", "client-handshake", "client"]))
def test_fuzz_frame_by_frame_with_each_sides_accepted_frames(data, side):
    """The peer server's reading path: frame by frame, only the frames the side receives."""
    accept = {"server-handshake": wire.SERVER_HANDSHAKE, "server": wire.SERVER_RECEIVES,
              "client-handshake": wire.CLIENT_HANDSHAKE, "client": wire.CLIENT_RECEIVES}[side]
    reader = wire.FrameReader(max_payload=64, accept=accept)
    pending = memoryview(data)
    try:
        while pending:
            pending = pending[reader.receive_frame(pending) :]
            event = reader.next_event()
            if event is None:
                break
            assert wire.FrameType[_KINDS[type(event)]] in accept
    except RemoteProtocolError:
        return


_KINDS = {
    wire.Hello: "HELLO", wire.Auth: "AUTH", wire.GetManifest: "GET_MANIFEST", wire.ManifestData: "MANIFEST",
    wire.GetHave: "GET_HAVE", wire.Have: "HAVE", wire.Announce: "ANNOUNCE", wire.Decline: "DECLINE",
    wire.Request: "REQUEST", wire.Chunk: "CHUNK", wire.Error: "ERROR",
}


@pytest.mark.parametrize("event,data", TABLE)
def test_receive_frame_decodes_a_whole_control_frame_where_it_lies(event, data):
    """The peer server's batches: a whole frame at the start of the bytes read is decoded
    without copying, to the same event; what follows is left for the next call."""
    reader = wire.FrameReader()
    stream = memoryview(data + b"\x06")  # and the first byte of a next frame
    assert reader.receive_frame(stream) == len(data)
    assert reader.next_event() == event
    assert reader.at_frame_boundary


@pytest.mark.parametrize("why,data", [
    ("unknown frame type", b"\x63\x00\x00\x00\x00"),
    ("unexpected MANIFEST frame", wire.encode(wire.ManifestData(FID, b"x"))),
    ("out of bounds", b"\x06\x00\x00\x00\x05" + bytes(5)),
])
def test_a_whole_frame_is_refused_as_the_byte_by_byte_path_refuses_it(why, data):
    whole = wire.FrameReader(accept=wire.SERVER_RECEIVES)
    with pytest.raises(RemoteProtocolError, match=why):
        whole.receive_frame(memoryview(data))
    with pytest.raises(LocalProtocolError):  # and the reader is not used again
        whole.get_buffer()
    piecewise = wire.FrameReader(accept=wire.SERVER_RECEIVES)
    with pytest.raises(RemoteProtocolError, match=why):
        for byte in data:
            piecewise.receive_data(bytes([byte]))
