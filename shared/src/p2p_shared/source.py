"""What a peer server serves for one file id: a complete file, or a part file with the chunks
verified so far. The server asks a source for the manifest, which chunks it holds, and a file
handle to send them from; nothing here knows about sockets or the event loop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol

from .manifest import Manifest


class ChunkSource(Protocol):
    manifest: Manifest
    manifest_bytes: bytes

    @property
    def raw_id(self) -> bytes: ...

    @property
    def complete(self) -> bool: ...

    def has(self, index: int) -> bool: ...

    def held(self) -> list[int] | None:
        """The chunks held, or None for all of them."""

    def open(self) -> BinaryIO:
        """A handle of its own for one connection (OSError if the file cannot be read)."""

    def servable(self, handle: BinaryIO) -> bool:
        """False when the bytes behind the handle are no longer those the manifest describes."""


class PartialSource:
    """A download in progress: serves only chunks verified and written to its part file.

    It keeps a read-only descriptor of the part file, so it goes on serving the same bytes
    after the file is renamed to its final name (same inode)."""

    def __init__(self, manifest: Manifest, path: Path, verified: set[int]) -> None:
        self.manifest = manifest
        self.manifest_bytes = manifest.encode()
        self._raw_id = manifest.raw_id
        self._verified = set(verified)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    @property
    def raw_id(self) -> bytes:
        return self._raw_id

    @property
    def complete(self) -> bool:
        return len(self._verified) == self.manifest.num_chunks

    def add(self, index: int) -> None:
        """A chunk verified and written: from now on it may be served."""
        self._verified.add(index)

    def has(self, index: int) -> bool:
        return index in self._verified

    def held(self) -> list[int] | None:
        return None if self.complete else sorted(self._verified)

    def open(self) -> BinaryIO:
        # A new open file description (not a dup): each connection seeks on its own.
        return open(f"/proc/self/fd/{self._fd}", "rb", buffering=0)

    def servable(self, handle: BinaryIO) -> bool:
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
