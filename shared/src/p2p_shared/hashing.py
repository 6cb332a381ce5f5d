"""Hashing a file's chunks from disk, spread over threads (hashlib and preadv release the GIL)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .manifest import chunk_count


def hash_chunks(path: Path, size: int, chunk_size: int, workers: int | None = None) -> bytes:
    """Concatenated SHA-256 digests of every chunk of the file at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return b"".join(digest_chunks(fd, size, chunk_size, range(chunk_count(size, chunk_size)), workers))
    finally:
        os.close(fd)


def digest_chunks(
    fd: int,
    size: int,
    chunk_size: int,
    indices: Sequence[int],
    workers: int | None = None,
    hashed: Callable[[int], None] | None = None,
) -> list[bytes]:
    """SHA-256 of the chunks `indices` of the open file `fd`, in that order. Each worker hashes a
    contiguous stretch of `indices`, reading into one reused buffer, so memory is workers x
    chunk_size whatever the file size. `hashed(nbytes)` is called after each chunk, from the
    workers."""
    count = len(indices)
    if count == 0:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, count))
    bounds = [count * w // workers for w in range(workers + 1)]

    def stretch(first: int, last: int) -> list[bytes]:
        buffer = bytearray(chunk_size)
        view = memoryview(buffer)
        digests = []
        for index in indices[first:last]:
            offset = index * chunk_size
            want = min(chunk_size, size - offset)
            got = 0
            while got < want:
                n = os.preadv(fd, [view[got:want]], offset + got)
                if n == 0:
                    raise OSError(f"the file shrank while being hashed (chunk {index})")
                got += n
            digests.append(hashlib.sha256(view[:want]).digest())
            if hashed is not None:
                hashed(want)
        return digests

    with ThreadPoolExecutor(workers, thread_name_prefix="hash") as pool:
        parts = list(pool.map(stretch, bounds[:-1], bounds[1:]))
    return [digest for part in parts for digest in part]
