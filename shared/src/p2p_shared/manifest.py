"""The manifest names a file's bytes; its SHA-256 is the file id.

Canonical binary encoding (big-endian), so the same file always gets the same id:

    b"P2PM" | version u8 | size u64 | chunk_size u32 | name_len u16 | name UTF-8 | digests

where digests are the SHA-256 of each chunk, 32 bytes each, in order. The chunk count is
derived from size and chunk size, so it cannot disagree with them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from functools import cached_property

from .errors import ManifestError
from .limits import MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_FILE_SIZE
from .names import check_file_name

MAGIC = b"P2PM"
MANIFEST_VERSION = 1
DIGEST_SIZE = 32
_HEADER = struct.Struct("!4sBQIH")


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def max_manifest_bytes() -> int:
    return _HEADER.size + 1020 + MAX_CHUNKS * DIGEST_SIZE


@dataclass(frozen=True)
class Manifest:
    name: str
    size: int
    chunk_size: int
    digests: bytes = field(repr=False)  # DIGEST_SIZE bytes per chunk, concatenated

    def __post_init__(self) -> None:
        try:
            check_file_name(self.name)
        except ValueError as exc:
            raise ManifestError(f"bad manifest: {exc}") from None
        if not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise ManifestError(f"bad manifest: chunk size {self.chunk_size} out of range")
        if not 0 <= self.size <= MAX_FILE_SIZE:
            raise ManifestError(f"bad manifest: size {self.size} out of range")
        count = chunk_count(self.size, self.chunk_size)
        if count > MAX_CHUNKS:
            raise ManifestError(f"bad manifest: {count} chunks, more than {MAX_CHUNKS}")
        if len(self.digests) != count * DIGEST_SIZE:
            raise ManifestError(
                f"bad manifest: {len(self.digests) // DIGEST_SIZE} digests for {count} chunks"
            )

    @property
    def num_chunks(self) -> int:
        return len(self.digests) // DIGEST_SIZE

    def chunk_digest(self, index: int) -> bytes:
        return self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk `index` in the file."""
        if not 0 <= index < self.num_chunks:
            raise IndexError(f"chunk {index} out of range 0..{self.num_chunks - 1}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def encode(self) -> bytes:
        name = self.name.encode("utf-8")
        header = _HEADER.pack(MAGIC, MANIFEST_VERSION, self.size, self.chunk_size, len(name))
        return header + name + self.digests

    @cached_property
    def raw_id(self) -> bytes:
        """The file id: SHA-256 of the encoded manifest (hex only at the edges: `file_id`)."""
        return hashlib.sha256(self.encode()).digest()

    @property
    def file_id(self) -> str:
        return self.raw_id.hex()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        if len(data) < _HEADER.size:
            raise ManifestError("bad manifest: truncated header")
        magic, version, size, chunk_size, name_len = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ManifestError("bad manifest: wrong magic")
        if version != MANIFEST_VERSION:
            raise ManifestError(f"bad manifest: unsupported version {version}")
        end = _HEADER.size + name_len
        if len(data) < end:
            raise ManifestError("bad manifest: truncated name")
        try:
            name = bytes(data[_HEADER.size : end]).decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError("bad manifest: name is not UTF-8") from None
        return cls(name=name, size=size, chunk_size=chunk_size, digests=bytes(data[end:]))

    @classmethod
    def decode_verified(cls, data: bytes, file_id: str) -> Manifest:
        """Decode a manifest received from a peer, refusing it unless it hashes to `file_id`."""
        if file_id_of(data) != file_id:
            raise ManifestError(f"manifest does not hash to file id {file_id[:12]}")
        return cls.decode(data)


def file_id_of(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


def is_file_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
