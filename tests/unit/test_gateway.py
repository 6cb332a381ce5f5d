"""The gateway's HTTP rules without a server: ranges (RFC 9110), validators, the file name a
browser shows."""

import pytest

from p2p_peer.gateway import Span, byte_span, content_disposition, etag_matches
from p2p_shared.errors import Unsatisfiable

SIZE = 1000


@pytest.mark.parametrize(
    "header, span",
    [
        (None, Span(0, SIZE, False)),
        ("bytes=0-0", Span(0, 1, True)),
        ("bytes=10-19", Span(10, 20, True)),
        ("bytes=990-", Span(990, SIZE, True)),
        ("bytes=990-5000", Span(990, SIZE, True)),  # past the end: clipped
        ("bytes=-10", Span(990, SIZE, True)),
        ("bytes=-5000", Span(0, SIZE, True)),  # a suffix longer than the file: all of it
        ("bytes=0-9,20-29", Span(0, SIZE, False)),  # several ranges: the whole file
        ("items=0-9", Span(0, SIZE, False)),  # another unit: ignored
        ("bytes=9-1", Span(0, SIZE, False)),  # invalid: ignored
        ("bytes=a-b", Span(0, SIZE, False)),
        ("bytes=-", Span(0, SIZE, False)),
        ("bytes= 5-6", Span(5, 7, True)),
    ],
)
def test_ranges(header, span):
    assert byte_span(header, SIZE) == span


@pytest.mark.parametrize("header, size", [("bytes=1000-", SIZE), ("bytes=5000-6000", SIZE), ("bytes=-0", SIZE), ("bytes=0-", 0)])
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(Unsatisfiable):
        byte_span(header, size)


def test_if_none_match():
    etag = '"' + "ab" * 32 + '"'
    assert etag_matches(etag, etag)
    assert etag_matches(f'"other", W/{etag}', etag)
    assert etag_matches("*", etag)
    assert not etag_matches('"other"', etag)
    assert not etag_matches(None, etag)


def test_content_disposition_carries_any_name_safely():
    assert content_disposition("a.bin") == "attachment; filename=\"a.bin\"; filename*=UTF-8''a.bin"
    shown = content_disposition('naïve "quoted" été.bin')
    assert 'filename="na?ve _quoted_ ?t?.bin"' in shown and "filename*=UTF-8''na%C3%AFve%20%22quoted%22%20%C3%A9t%C3%A9.bin" in shown
