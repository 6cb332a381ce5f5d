import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p_shared.errors import ManifestError
from p2p_shared.limits import MAX_CHUNK_SIZE, MAX_CHUNKS
from p2p_shared.manifest import Manifest, chunk_count, is_file_id


def digests(*chunks: bytes) -> bytes:
    return b"".join(hashlib.sha256(c).digest() for c in chunks)


def test_canonical_encoding_and_file_id():
    m = Manifest(name="a.txt", size=5, chunk_size=4, digests=digests(b"abcd", b"e"))
    expected = b"P2PM" + struct.pack("!BQIH", 1, 5, 4, 5) + b"a.txt" + digests(b"abcd", b"e")
    assert m.encode() == expected
    assert m.file_id == hashlib.sha256(expected).hexdigest()
    assert Manifest.decode(expected) == m
    assert Manifest.decode_verified(expected, m.file_id) == m


def test_file_id_changes_with_any_field():
    base = Manifest(name="a", size=5, chunk_size=4, digests=digests(b"abcd", b"e"))
    others = [
        Manifest(name="b", size=5, chunk_size=4, digests=base.digests),
        Manifest(name="a", size=6, chunk_size=4, digests=digests(b"abcd", b"ef")),
        Manifest(name="a", size=5, chunk_size=3, digests=digests(b"abc", b"de")),
        Manifest(name="a", size=5, chunk_size=4, digests=digests(b"abcd", b"f")),
    ]
    assert len({base.file_id, *(m.file_id for m in others)}) == 5


@pytest.mark.parametrize(
    ("size", "chunk", "count", "spans"),
    [
        (0, 4, 0, []),
        (1, 4, 1, [(0, 1)]),
        (4, 4, 1, [(0, 4)]),
        (5, 4, 2, [(0, 4), (4, 1)]),
    ],
)
def test_chunk_spans(size, chunk, count, spans):
    m = Manifest(name="f", size=size, chunk_size=chunk, digests=bytes(32 * count))
    assert chunk_count(size, chunk) == m.num_chunks == count
    assert [m.chunk_span(i) for i in range(count)] == spans
    with pytest.raises(IndexError):
        m.chunk_span(count)


def test_hash_mismatch_is_refused():
    m = Manifest(name="a", size=1, chunk_size=4, digests=digests(b"x"))
    with pytest.raises(ManifestError, match="does not hash"):
        Manifest.decode_verified(m.encode(), "0" * 64)


GOOD = Manifest(name="ok", size=1, chunk_size=4, digests=bytes(32)).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        GOOD[:10],
        b"XXXX" + GOOD[4:],
        GOOD[:4] + b"\x02" + GOOD[5:],  # version
        GOOD + bytes(32),  # one digest too many
        GOOD[:-1],
        b"P2PM" + struct.pack("!BQIH", 1, 1, 0, 2) + b"ok",  # chunk size 0
        b"P2PM" + struct.pack("!BQIH", 1, 2**64 - 1, 1, 2) + b"ok",  # absurd size
        b"P2PM" + struct.pack("!BQIH", 1, 0, 4, 2) + b"..",
        b"P2PM" + struct.pack("!BQIH", 1, 0, 4, 5) + b"a/b/c",
        b"P2PM" + struct.pack("!BQIH", 1, 0, 4, 2) + b"\xff\xfe",
        b"P2PM" + struct.pack("!BQIH", 1, 0, 4, 9) + b"ab",  # name cut off
    ],
)
def test_bad_manifests_are_typed_errors(data):
    with pytest.raises(ManifestError):
        Manifest.decode(data)


def test_is_file_id():
    assert is_file_id("ab" * 32)
    assert not is_file_id("AB" * 32) and not is_file_id("ab" * 31) and not is_file_id("large.txt")


@given(st.binary(max_size=300))
def test_fuzz_any_bytes_decode_to_a_manifest_or_a_typed_error(data):
    try:
        Manifest.decode(data)
    except ManifestError:
        pass


@given(st.binary(min_size=15, max_size=15), st.binary(max_size=40), st.binary(max_size=100))
def test_fuzz_headers_with_the_right_magic(fields, name, digests):
    data = b"P2PM" + fields + name + digests
    try:
        m = Manifest.decode(data)
    except ManifestError:
        return
    assert m.encode() == data  # whatever decodes is canonical: it encodes back to the same bytes


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(0, 1), (1, 1), (MAX_CHUNK_SIZE, MAX_CHUNK_SIZE), (MAX_CHUNKS, 1)],
    ids=["empty", "chunk-size-1", "largest-chunk", "most-chunks"],
)
def test_manifests_at_the_limits_are_accepted_and_round_trip(size, chunk_size):
    m = Manifest(name="edge.bin", size=size, chunk_size=chunk_size, digests=bytes(32 * chunk_count(size, chunk_size)))
    assert Manifest.decode(m.encode()) == m


@pytest.mark.parametrize(
    ("size", "chunk_size", "count", "error"),
    [(1, MAX_CHUNK_SIZE + 1, 1, "chunk size"), (MAX_CHUNKS + 1, 1, MAX_CHUNKS + 1, "chunks, more than")],
)
def test_manifests_just_past_the_limits_are_refused(size, chunk_size, count, error):
    with pytest.raises(ManifestError, match=error):
        Manifest(name="edge.bin", size=size, chunk_size=chunk_size, digests=bytes(32 * count))


def test_an_empty_file_manifest_is_exactly_its_header_and_name():
    data = Manifest(name="e", size=0, chunk_size=4, digests=b"").encode()
    assert len(data) == 4 + 1 + 8 + 4 + 2 + 1
    assert Manifest.decode(data).num_chunks == 0


def test_chunk_digests_are_read_in_order():
    m = Manifest(name="a.txt", size=5, chunk_size=4, digests=digests(b"abcd", b"e"))
    assert [m.chunk_digest(i) for i in range(2)] == [hashlib.sha256(b"abcd").digest(), hashlib.sha256(b"e").digest()]


def test_file_ids_are_lowercase_hex_only():
    assert not is_file_id("X" * 64) and not is_file_id("AB" * 32) and is_file_id("ab" * 32)
