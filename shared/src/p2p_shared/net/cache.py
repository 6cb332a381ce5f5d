"""A per-host peer's cache on disk: every file it fetched, shared with the swarm, bounded in
bytes, found again after a restart.

One folder per file, named by its file id, under CACHE/files:

    CACHE/<file id>/manifest    the manifest (it must hash to the folder's name); its mtime is
                                the file's last use
    CACHE/<file id>/<name>      the complete file
    CACHE/<file id>/<name>.part a download under way, or interrupted
    CACHE/<file id>/identity    the complete file's identity when it was verified (device,
                                inode, size, mtime, ctime): unchanged, it is not hashed again

Every file, complete or in part, is served to peers and registered with the tracker (through
the engine). A restart serves the complete files again without rehashing them when unchanged
(the seeder's rule) and resumes the part files (the leecher's rule: their chunks are checked).
Room is made by CacheIndex's rule; an evicted file is dropped from the tracker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..cache import CacheEntry, CacheIndex
from ..catalog import SeededFile, identity
from ..errors import DownloadError, ManifestError
from ..manifest import Manifest
from ..settings import DownloadSettings
from ..storage import verified_chunks
from .download import Download, Watcher
from .engine import Engine

log = structlog.get_logger()
MAX_DESCRIBED = 64  # downloads described and kept for a fetch that may follow


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry, role: str, cache: HostCache) -> None:
        index = cache.index
        Gauge(f"p2p_{role}_cache_capacity_bytes", "Bytes the cache may hold", registry=registry).set_function(
            lambda: index.capacity
        )
        Gauge(f"p2p_{role}_cache_bytes", "Bytes the cache holds (a file being fetched counts whole)", registry=registry).set_function(
            lambda: index.used
        )
        Gauge(
            f"p2p_{role}_cache_in_use_bytes", "Bytes of the cache in files being read or fetched (not evictable)",
            registry=registry,
        ).set_function(lambda: sum(e.size for e in index.entries.values() if e.in_use))
        files = Gauge(f"p2p_{role}_cache_files", "Files in the cache, complete or in part", ["state"], registry=registry)
        files.labels("complete").set_function(lambda: sum(e.complete for e in index.entries.values()))
        files.labels("partial").set_function(lambda: sum(not e.complete for e in index.entries.values()))
        self.evictions = Counter(f"p2p_{role}_cache_evictions_total", "Files evicted to make room", registry=registry)
        self.refused = Counter(
            f"p2p_{role}_cache_refused_total", "Files refused for want of room (every other file in use)", registry=registry
        )


class HostCache(Watcher):
    def __init__(self, directory: Path, capacity: int, engine: Engine, settings: DownloadSettings) -> None:
        self.directory = directory / "files"
        self.index = CacheIndex(capacity)
        self.engine = engine
        self.settings = settings
        self.metrics: CacheMetrics | None = None
        self._manifests: dict[bytes, Manifest] = {}
        self._complete: dict[bytes, SeededFile] = {}  # verified whole, served from their final path
        self.seeded: dict[bytes, SeededFile] = {}  # files served from where they are (not the cache's)
        self._downloads: dict[bytes, Download] = {}  # running, by file id (once known)
        self._followed: set[Download] = set()
        self._described: dict[str, Download] = {}  # by file id: described, not fetched (yet)

    def _folder(self, file_id: bytes) -> Path:
        return self.directory / file_id.hex()

    # -- what is here --------------------------------------------------------------------------

    def known(self, file_id: str) -> Manifest | None:
        """The manifest of a file this cache holds, complete or in part."""
        return self._manifests.get(bytes.fromhex(file_id))

    def complete(self, file_id: bytes) -> SeededFile | None:
        """A whole file this host serves: from the cache, or seeded from where it is. A cached
        file that changed on disk since it was verified (bit rot, an edit) is let go, so that it
        is fetched through the swarm again rather than refused at every request."""
        cached = self._complete.get(file_id)
        if cached is not None and _changed(cached):
            log.warning("cache: a file changed on disk since it was verified; fetching it again", file=cached.manifest.name)
            self.forget(file_id)
            cached = None
        return cached or self.seeded.get(file_id)

    def seed(self, seeded: SeededFile, super_seed: bool) -> None:
        """Serve a file from where it is, as an origin does: never evicted, not counted."""
        self.seeded[seeded.raw_id] = seeded
        self._manifests[seeded.raw_id] = seeded.manifest
        self.engine.serve(seeded, super_seed)

    def find(self, name: str) -> bytes | None:
        """A whole file of that name here (seeded, or the most recently used in the cache)."""
        for seeded in self.seeded.values():
            if seeded.manifest.name == name:
                return seeded.raw_id
        named = [e for e in self.index.entries.values() if e.complete and e.name == name]
        return max(named, key=lambda e: e.last_used).file_id if named else None

    def listing(self) -> list[dict]:
        rows = []
        for entry in sorted(self.index.entries.values(), key=lambda e: -e.last_used):
            download = self._downloads.get(entry.file_id)
            manifest = self._manifests[entry.file_id]
            if entry.complete:
                verified = entry.size
            elif download is not None:
                verified = sum(manifest.chunk_span(i)[1] for i in download.verified)
            else:
                verified = 0
            rows.append({
                "file_id": entry.file_id.hex(), "name": entry.name, "size": entry.size, "complete": entry.complete,
                "verified_bytes": verified, "readers": entry.readers, "fetching": entry.fetching,
                "last_used": round(entry.last_used, 3),
            })
        return rows

    @contextlib.contextmanager
    def reading(self, file_id: bytes) -> Iterator[None]:
        """A client reads this file: it is not evicted meanwhile, and counts as used now."""
        entry = self.index.get(file_id)
        if entry is not None:
            entry.readers += 1
            self._used(entry)
        try:
            yield
        finally:
            if entry is not None:
                entry.readers -= 1
                self._used(entry)

    def _used(self, entry: CacheEntry) -> None:
        entry.last_used = time.time()
        with contextlib.suppress(OSError):  # the manifest's mtime keeps it across restarts
            os.utime(self._folder(entry.file_id) / "manifest", (entry.last_used, entry.last_used))

    # -- fetching ------------------------------------------------------------------------------

    def fetch(self, target: str, whole: bool = True) -> Download:
        """The download of `target` into the cache: a new one, or the one under way. `whole`:
        the file is wanted whole, not only the parts readers read (which may stop it early)."""
        described = self._described.pop(target, None)
        download = self.engine.fetch(target, self.settings, self.place, self.known, described)
        download.whole = download.whole or whole
        # The cache keeps its own books of the space its files take: the free space is checked,
        # not claimed ahead (a reader waiting for its first byte does not pay for it).
        download.preallocate = False
        if download not in self._followed:
            self._followed.add(download)
            download.watchers.append(self)
            asyncio.create_task(self._settle(download))
        return download

    async def started(self, download: Download) -> None:
        assert download.manifest is not None
        self._downloads[download.manifest.raw_id] = download

    async def describe(self, target: str) -> Manifest:
        """The manifest of the file `target` names (through the tracker; from a holder unless
        this host has it). A fetch of it soon after starts from what this found (its holders,
        its manifest) instead of looking again."""
        download = self.engine.download(target, self.settings, self.place, self.known)
        manifest = await download.describe()
        self._described[manifest.file_id] = download
        while len(self._described) > MAX_DESCRIBED:
            self._described.pop(next(iter(self._described))).close()
        return manifest

    def place(self, manifest: Manifest) -> Path:
        """Where a download puts the file: room is made first (or CacheFull), and the manifest
        written, so a restart finds the part file."""
        file_id = manifest.raw_id
        entry = self.index.get(file_id)
        if entry is None:
            self.make_room(manifest.size, manifest.name)
            entry = CacheEntry(file_id, manifest.name, manifest.size, time.time())
            self.index.add(entry)
        entry.fetching = True
        entry.owner = asyncio.current_task()  # the download's task: place() runs in it
        folder = self._folder(file_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(folder / "manifest", manifest.encode())
        except OSError as exc:
            entry.fetching = False
            raise DownloadError(f"cannot write to the cache at {folder}: {exc.strerror}") from None
        self._manifests[file_id] = manifest
        return folder / manifest.name

    def make_room(self, size: int, name: str) -> None:
        """Evict what must go for a new file of `size` bytes (a download's, or one that comes
        from outside the swarm: see `adopt`); CacheFull (counted) if it cannot fit."""
        try:
            victims = self.index.victims(size, name)
        except DownloadError:
            if self.metrics is not None:
                self.metrics.refused.inc()
            raise
        for victim in victims:
            self.evict(victim)

    def staging(self) -> Path:
        """A folder on the cache's file system for files that come from outside the swarm."""
        folder = self.directory.parent / "staging"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def adopt(self, staged: Path, manifest: Manifest) -> SeededFile:
        """A whole file that came from outside the swarm (a blob from a registry), written to
        `staging()` and verified by the caller, moved into the cache: served and registered
        complete, as a finished download is."""
        file_id = manifest.raw_id
        here = self.complete(file_id)
        if here is not None:
            staged.unlink(missing_ok=True)
            return here
        self.make_room(manifest.size, manifest.name)
        folder = self._folder(file_id)
        final = folder / manifest.name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(folder / "manifest", manifest.encode())
            os.replace(staged, final)
            st = final.stat()
            _write_atomically(folder / "identity", " ".join(map(str, identity(st))).encode())
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise DownloadError(f"cannot write to the cache at {folder}: {exc.strerror}") from None
        self.index.add(CacheEntry(file_id, manifest.name, manifest.size, time.time(), complete=True))
        self._manifests[file_id] = manifest
        seeded = self._complete[file_id] = SeededFile(final, manifest, manifest.encode(), identity(st))
        self.engine.serve(seeded)
        log.info("cached", file=manifest.name, file_id=manifest.file_id, size=manifest.size, source="outside the swarm")
        return seeded

    async def _settle(self, download: Download) -> None:
        """When a download ends: a whole file is remembered with its identity; a failed one
        keeps its verified chunks in its part file, or leaves the cache if nothing is left."""
        assert download.task is not None
        try:
            await download.task
        except BaseException:  # the download said why; the cache only keeps its books
            pass
        self._followed.discard(download)
        manifest = download.manifest
        if manifest is None:
            return
        file_id = manifest.raw_id
        entry = self.index.get(file_id)
        if entry is None or entry.owner is not download.task:
            return  # dropped meanwhile, or placed again by a newer download: not ours to settle
        if self._downloads.get(file_id) is download:
            del self._downloads[file_id]
        entry.fetching = False
        entry.owner = None
        final = self._folder(file_id) / manifest.name
        if download.task.cancelled() or download.task.exception() is not None:
            if not final.with_name(final.name + ".part").exists():
                self.forget(file_id)
            return
        try:
            st = final.stat()
            _write_atomically(self._folder(file_id) / "identity", " ".join(map(str, identity(st))).encode())
        except OSError as exc:
            log.warning("cache: cannot record a file's identity; it is checked again at the next start", error=exc.strerror)
            st = None
        entry.complete = True
        if st is not None:
            self._complete[file_id] = SeededFile(final, manifest, manifest.encode(), identity(st))
        log.info("cached", file=manifest.name, file_id=manifest.file_id, size=manifest.size)

    # -- letting go ----------------------------------------------------------------------------

    def evict(self, file_id: bytes) -> None:
        entry = self.index.get(file_id)
        log.info("evicting", file=entry.name if entry else None, file_id=file_id.hex(), size=entry.size if entry else None)
        self.forget(file_id)
        if self.metrics is not None:
            self.metrics.evictions.inc()

    def forget(self, file_id: bytes) -> None:
        """Out of the cache: no longer served, dropped from the tracker, its folder removed."""
        self.engine.drop(file_id)
        self.index.remove(file_id)
        self._manifests.pop(file_id, None)
        self._complete.pop(file_id, None)
        shutil.rmtree(self._folder(file_id), ignore_errors=True)

    async def delete(self, file_id: bytes) -> bool:
        """Drop a file on request (stopping its download): False if it is not here."""
        if file_id not in self.index:
            return False
        download = self.engine.downloads.get(file_id)
        if download is not None and download.task is not None:
            download.task.cancel()
            with contextlib.suppress(BaseException):
                await download.task
        self.forget(file_id)
        return True

    # -- a restart -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Find the cache again: serve what is whole, resume what is not."""
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.directory.parent / "staging", ignore_errors=True)  # unfinished and unverified
        resumed = 0
        for folder in sorted(self.directory.iterdir()):
            found = await asyncio.to_thread(_examine, folder)
            if found is None:
                log.warning("cache: removing what is not a cache entry, or a damaged one", path=str(folder))
                await asyncio.to_thread(shutil.rmtree, folder, True)
                continue
            manifest, seeded, used = found
            file_id = manifest.raw_id
            self._manifests[file_id] = manifest
            self.index.add(CacheEntry(file_id, manifest.name, manifest.size, used, complete=seeded is not None))
            if seeded is not None:
                self._complete[file_id] = seeded
                self.engine.serve(seeded)
            else:
                resumed += 1
                self.fetch(manifest.file_id)
        log.info(
            "cache opened", path=str(self.directory), files=len(self.index.entries), resumed=resumed,
            bytes=self.index.used, capacity=self.index.capacity,
        )


def _examine(folder: Path) -> tuple[Manifest, SeededFile | None, float] | None:
    """A cache folder's manifest, its complete file (verified, or unchanged since it was), and
    its last use; None if the folder is not a sound cache entry."""
    try:
        data = (folder / "manifest").read_bytes()
        if sha256(data).hexdigest() != folder.name:
            return None
        manifest = Manifest.decode(data)
        used = (folder / "manifest").stat().st_mtime
    except (OSError, ManifestError):
        return None
    final = folder / manifest.name
    part = final.with_name(final.name + ".part")
    try:
        st = final.stat()
    except OSError:
        return (manifest, None, used) if part.exists() else None
    signature = identity(st)
    try:
        recorded = tuple(int(n) for n in (folder / "identity").read_text().split())
    except (OSError, ValueError):
        recorded = ()
    if recorded != signature:
        if len(verified_chunks(final, manifest)) != manifest.num_chunks:
            log.warning("cache: a complete file changed on disk; dropping it", path=str(final))
            return None
        _write_atomically(folder / "identity", " ".join(map(str, signature)).encode())
    return manifest, SeededFile(final, manifest, data, signature), used


def _changed(copy: SeededFile) -> bool:
    try:
        return copy.changed(os.stat(copy.path))
    except OSError:
        return True  # gone


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
