"""The cache's books without I/O: bytes, least recently used first out, never a file in use,
down to the low watermark, and a clear refusal when nothing can make room."""

import pytest

from p2p_shared.cache import CacheEntry, CacheIndex
from p2p_shared.errors import CacheFull


def index_of(capacity: int, *entries: tuple[str, int, float]) -> CacheIndex:
    index = CacheIndex(capacity)
    for name, size, used in entries:
        index.add(CacheEntry(name.encode(), name, size, used, complete=True))
    return index


def test_nothing_goes_while_the_new_file_fits():
    index = index_of(100, ("a", 40, 1.0), ("b", 40, 2.0))
    assert index.victims(20) == []
    assert index.used == 80


def test_the_least_recently_used_go_first_down_to_the_low_watermark():
    index = index_of(100, ("a", 30, 3.0), ("b", 30, 1.0), ("c", 30, 2.0))
    # 90 used, 20 more: over 100. Down to 90 - 20 = 70 at most: b (the oldest) is enough.
    assert index.victims(20) == [b"b"]
    # 45 more: down to 90 - 45 = 45 at most, so b and then c go, a (the newest) stays.
    assert index.victims(45) == [b"b", b"c"]


def test_eviction_stops_once_the_file_fits_under_the_watermark():
    index = index_of(1000, *((f"f{i}", 100, float(i)) for i in range(10)))
    assert index.victims(50) == [b"f0", b"f1"]  # 1000 - 200 + 50 = 850 <= 900 - 50


def test_files_being_read_or_fetched_are_never_evicted():
    index = index_of(100, ("a", 40, 1.0), ("b", 40, 2.0), ("c", 20, 3.0))
    index.get(b"a").readers = 1
    index.get(b"b").fetching = True
    assert index.victims(20) == [b"c"]


def test_a_file_that_cannot_fit_is_refused_and_nothing_is_chosen():
    index = index_of(100, ("a", 60, 1.0), ("b", 30, 2.0))
    index.get(b"a").readers = 2
    with pytest.raises(CacheFull, match="no room in the cache for big.bin .50 bytes.*60 of them in files being read"):
        index.victims(50, "big.bin")
    assert index.used == 90  # the books are as they were


def test_touch_moves_a_file_to_the_back_of_the_line():
    index = index_of(100, ("a", 50, 1.0), ("b", 50, 2.0))
    index.touch(b"a", 5.0)
    assert index.victims(10) == [b"b"]


def test_a_file_larger_than_the_cache_is_refused_even_when_empty():
    with pytest.raises(CacheFull):
        CacheIndex(10).victims(11)
