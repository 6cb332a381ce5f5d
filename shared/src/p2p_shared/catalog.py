"""The files a seeder serves: manifests built at start, cached across restarts.

A file is known by its identity on disk: (device, inode, size, mtime, ctime). Any write, and
any change of mtime, sets ctime to the kernel's clock, which no user can set: a file edited in
place, its size and mtime put back, is not the file that was hashed. Comparing that identity
costs one stat per file at start (the cache) and per chunk served; hashing again at every
start would read every byte of every file (about 0.3 s per GiB on two cores).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog

from .errors import ManifestError, P2PError
from .hashing import digest_chunks
from .manifest import Manifest, chunk_count
from .messages import FileEntry

log = structlog.get_logger()


@dataclass(frozen=True)
class SeededFile:
    """A complete file: the ChunkSource a seeder serves (p2p_shared.source)."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    signature: tuple[int, ...]  # its identity when hashed (`identity`): a changed file is not served

    complete = True

    def changed(self, st: os.stat_result) -> bool:
        return identity(st) != self.signature

    @property
    def raw_id(self) -> bytes:
        return self.manifest.raw_id

    @property
    def file_id(self) -> str:
        return self.manifest.file_id

    def has(self, index: int) -> bool:
        return 0 <= index < self.manifest.num_chunks

    def held(self) -> None:
        return None

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def servable(self, handle: BinaryIO) -> bool:
        return not self.changed(os.fstat(handle.fileno()))

    def entry(self) -> FileEntry:
        return file_entry(self.manifest)


def file_entry(manifest: Manifest) -> FileEntry:
    """What the tracker keeps of a file."""
    return FileEntry(file_id=manifest.file_id, name=manifest.name, size=manifest.size, chunk_size=manifest.chunk_size)


def identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced, written or touched: ctime too, which no user can set."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ManifestCache:
    """Manifests keyed by path, chunk size and the file's identity: an unchanged file is not rehashed."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def _slot(self, path: Path, st: os.stat_result, chunk_size: int) -> Path | None:
        if self.directory is None:
            return None
        key = "\0".join(map(str, (path.resolve(), *identity(st), chunk_size)))
        return self.directory / (hashlib.sha256(key.encode()).hexdigest() + ".manifest")

    def load(self, path: Path, st: os.stat_result, chunk_size: int) -> Manifest | None:
        slot = self._slot(path, st, chunk_size)
        if slot is None:
            return None
        try:
            manifest = Manifest.decode(slot.read_bytes())
        except (OSError, ManifestError):
            return None
        if (manifest.name, manifest.size, manifest.chunk_size) != (path.name, st.st_size, chunk_size):
            return None
        return manifest

    def store(self, path: Path, st: os.stat_result, manifest: Manifest) -> None:
        slot = self._slot(path, st, manifest.chunk_size)
        if slot is None:
            return
        try:
            slot.parent.mkdir(parents=True, exist_ok=True)
            tmp = slot.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(manifest.encode())
            os.replace(tmp, slot)
        except OSError as exc:
            log.warning("manifest cache not written", path=str(slot), error=exc.strerror)


def load_file(
    path: Path, chunk_size: int, cache: ManifestCache, follow: bool = True
) -> tuple[SeededFile, float | None]:
    """Build (or load from cache) the manifest of one file, a link to it followed only if
    `follow`. Returns it and the seconds spent hashing (None when the manifest came from the cache)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        raise P2PError(f"cannot seed {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise P2PError(f"cannot seed {path}: not a regular file")
        manifest = cache.load(path, st, chunk_size)
        hash_seconds = None
        if manifest is None:
            started = time.perf_counter()
            digests = digest_chunks(fd, st.st_size, chunk_size, range(chunk_count(st.st_size, chunk_size)))
            hash_seconds = time.perf_counter() - started
            manifest = Manifest(name=path.name, size=st.st_size, chunk_size=chunk_size, digests=b"".join(digests))
            cache.store(path, st, manifest)
    except ManifestError as exc:
        raise P2PError(f"cannot seed {path}: {exc}") from None
    except OSError as exc:
        raise P2PError(f"cannot seed {path}: {exc}") from None
    finally:
        os.close(fd)
    data = manifest.encode()
    return SeededFile(path, manifest, data, identity(st)), hash_seconds


def expand_paths(paths: list[Path]) -> list[tuple[Path, bool]]:
    """Files as given, each with whether a link may be followed to it. A folder stands for the
    regular files directly inside it: a symbolic link there may point anywhere (a private key
    outside the folder), so links, like subfolders, are left out and said."""
    expanded = []
    for path in paths:
        if path.is_dir():
            inside = []
            for entry in sorted(p for p in path.iterdir() if not p.name.startswith(".")):
                if stat.S_ISREG(entry.lstat().st_mode):
                    inside.append((entry, False))
                else:
                    log.warning("not seeding what is not a regular file in a seeded folder", path=str(entry))
            if not inside:
                raise P2PError(f"cannot seed {path}: the folder holds no files")
            expanded += inside
        else:
            expanded.append((path, True))  # named by the operator: a link is theirs to follow
    return expanded
