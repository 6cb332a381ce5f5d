"""Hashing a file's chunks from disk, spread over threads (hashlib and preadv release the GIL)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .manifest import chunk_count


def hash_chunks(path: Path, size: int, chunk_size: int, workers: int | None = None) -> bytes:
    """Concatenated SHA-256 digests of every chunk. Each worker hashes a contiguous stripe,
    reading into one reused buffer, so memory is workers x chunk_size whatever the file size."""
    count = chunk_count(size, chunk_size)
    workers = max(1, min(workers or os.cpu_count() or 1, count))
    if count == 0:
        return b""
    bounds = [count * w // workers for w in range(workers + 1)]
    fd = os.open(path, os.O_RDONLY)
    try:
        def stripe(first: int, last: int) -> bytes:
            buffer = bytearray(chunk_size)
            view = memoryview(buffer)
            digests = bytearray()
            for index in range(first, last):
                offset = index * chunk_size
                want = min(chunk_size, size - offset)
                got = 0
                while got < want:
                    n = os.preadv(fd, [view[got:want]], offset + got)
                    if n == 0:
                        raise OSError(f"{path} shrank while being hashed")
                    got += n
                digests += hashlib.sha256(view[:want]).digest()
            return bytes(digests)

        with ThreadPoolExecutor(workers, thread_name_prefix="hash") as pool:
            parts = list(pool.map(stripe, bounds[:-1], bounds[1:]))
    finally:
        os.close(fd)
    return b"".join(parts)
