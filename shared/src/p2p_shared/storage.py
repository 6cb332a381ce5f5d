"""Where a download's bytes go: NAME.part, written at chunk offsets, renamed only when whole.

The part file is the durable progress: on a restart the chunks ever written to it are verified
against the manifest, so a resumed download fetches only what is missing or damaged. Which
chunks were written, the file system says (SEEK_DATA): space reserved and never written reads
as a hole, so checking a 1 TiB part file costs what was written to it, not 1 TiB.

The folder may not be ours alone: the part file is opened without following a link and must be
a regular file of ours with no other name, or nothing is written. The disk may be full: the
space is checked, then reserved, before any chunk is fetched, and a run that finds no room
leaves none of its bytes on the disk. Only a fully verified, fsynced file is linked to its
final name, through its descriptor, and never over an existing file.

Chunks are written with O_DIRECT where the file system takes it (a second descriptor on the
same file): the bytes go from the receiving buffer to the disk without a copy into the page
cache. That copy was the costliest step of a download after SHA-256 (fresh page-cache memory,
0.6-2 CPU-seconds a GiB on this machine against 0.1-0.2 for the direct write), and it bought
nothing: the file is fsynced whole at the end anyway. A write the kernel will not take directly
(a partial last chunk, a buffer not page-aligned, a file system without O_DIRECT) goes through
the page cache as before.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import threading
import time
from pathlib import Path

import structlog

from .errors import DownloadError, FinalExists
from .hashing import digest_chunks
from .manifest import Manifest

log = structlog.get_logger()

MIB = 1 << 20
DIRECT_ALIGN = 4096  # bytes: offsets and lengths a direct write needs (the buffer's address too)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def verified_chunks(path: Path, manifest: Manifest) -> set[int]:
    """Indices of the chunks of the regular file `path` that match the manifest (none if its size differs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block us
    except OSError:
        return set()
    try:
        return _verified(fd, path, manifest)
    finally:
        os.close(fd)


def _verified(fd: int, path: Path, manifest: Manifest) -> set[int]:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != manifest.size:
            return set()
        written = _chunks_with_data(fd, manifest)
    except OSError:
        return set()
    # A chunk never written reads as zeros: verified if the file has zeros there too.
    unwritten = set(range(manifest.num_chunks)).difference(written)
    zeros = {n: hashlib.sha256(bytes(n)).digest() for n in {manifest.chunk_span(i)[1] for i in unwritten}}
    done = {i for i in unwritten if manifest.chunk_digest(i) == zeros[manifest.chunk_span(i)[1]]}
    if not written:
        return done
    total = sum(manifest.chunk_span(i)[1] for i in written)
    log.info("checking chunks on disk", path=str(path), chunks=len(written), mib=round(total / MIB, 1))
    try:
        digests = digest_chunks(fd, manifest.size, manifest.chunk_size, written, hashed=_Reporter(path, total))
    except OSError:
        return set()
    return done | {i for i, digest in zip(written, digests) if digest == manifest.chunk_digest(i)}


def _chunks_with_data(fd: int, manifest: Manifest) -> list[int]:
    """The chunks that hold data, by SEEK_DATA and SEEK_HOLE. A file system that cannot tell
    says it is all data (or refuses to say), and every chunk is checked."""
    found: list[int] = []
    offset, size, chunk = 0, manifest.size, manifest.chunk_size
    try:
        while offset < size:
            start = os.lseek(fd, offset, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            first = max(start // chunk, found[-1] + 1 if found else 0)
            found += range(first, (end - 1) // chunk + 1)
            offset = end
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: no data past `offset`
            return list(range(manifest.num_chunks))
    return found


class _Reporter:
    """A log line every few seconds while chunks on disk are checked (a big part file takes minutes)."""

    def __init__(self, path: Path, total: int, every: float = 2.0) -> None:
        self.path, self.total, self.every = path, total, every
        self.done = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            now = time.monotonic()
            if now - self._last < self.every:
                return
            self._last = now
            done = self.done
        log.info(
            "checking chunks on disk", path=str(self.path), done_mib=round(done / MIB, 1),
            mib=round(self.total / MIB, 1), percent=round(100 * done / self.total, 1),
        )


def _refusal(st: os.stat_result) -> str | None:
    """Why we would not write into this file: only a regular file of ours with one name will do."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return "a hard link: it has another name"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by us"
    return None


def _space(nbytes: int) -> str:
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB")):
        if nbytes >= unit:
            return f"{nbytes / unit:.1f} {name}"
    return f"{nbytes / MIB:.1f} MiB"


class PartFile:
    """NAME.part, locked while we write it: a second leecher of the same file into the same
    folder at the same time (`docker compose up --scale leecher=N` on one download folder)
    downloads aside, into NAME.HOST-PID.part, instead of writing under the first."""

    def __init__(self, final: Path, size: int) -> None:
        self.final = final
        self.size = size
        self.path = final.with_name(final.name + ".part")
        self._no_space = False
        self._writes = threading.Condition()  # writes in flight: the descriptor outlives them
        self._writing = 0
        self.fd = self._open_locked(self.path)
        if self.fd < 0:
            aside = final.with_name(f"{final.name}.{os.uname().nodename}-{os.getpid()}.part")
            log.info("another leecher is writing this file here; downloading aside", part=str(self.path), aside=str(aside))
            self.path = aside
            self.fd = self._open_locked(aside)
        self.resumed = os.fstat(self.fd).st_size > 0
        self._direct = self._open_direct(self.fd)

    @staticmethod
    def _open_direct(fd: int) -> int:
        """The same file opened again for direct writes (through the descriptor, so it is the
        file we locked, whatever its name has become); -1 where that is not to be had."""
        if not hasattr(os, "O_DIRECT"):
            return -1
        try:
            return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:  # no /proc, or a file system without O_DIRECT (EINVAL)
            return -1

    @staticmethod
    def _open_locked(path: Path) -> int:
        """The part file's descriptor, locked for us; -1 if another process holds the lock."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DownloadError(
                    f"{path} is a symbolic link; refusing to write through it (remove it, or choose another -o)"
                ) from None
            raise DownloadError(f"cannot create {path}: {exc.strerror}") from None
        refusal = _refusal(os.fstat(fd))
        if refusal:
            os.close(fd)
            raise DownloadError(f"{path} is not a file this download can use ({refusal}); refusing to write into it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return -1
        return fd

    def verified_chunks(self, manifest: Manifest) -> set[int]:
        """The chunks already in the part file that match the manifest."""
        return _verified(self.fd, self.path, manifest)

    def reserve(self, keep: bool = False, allocate: bool = True) -> None:
        """Make the part file its full size and claim the disk space now, so a full disk fails the
        download at once, not at 99%. Without room, nothing the reservation took is kept; the part
        file itself is kept only if `keep` (it holds verified chunks from an earlier run). Without
        `allocate`, the free space is checked but not claimed (no fallocate: 3 ms a GiB here, paid
        before the first byte), for a caller that keeps its own books of the space it uses."""
        try:
            allocated = os.fstat(self.fd).st_blocks * 512
            fs = os.fstatvfs(self.fd)
            need, free = max(0, self.size - allocated), fs.f_bavail * fs.f_frsize
            if fs.f_blocks and need > free:  # (a file system that reports no size is not checked)
                # Checked first: ext4 keeps what a failed posix_fallocate got, and stays full.
                if keep:
                    self.close()
                else:
                    self._give_back()
                raise DownloadError(
                    f"No space left on device: {self.final.name} needs {_space(need)} more in "
                    f"{self.final.parent}, which has {_space(free)} free"
                    + (f"; the chunks verified in {self.path} are kept" if keep else "")
                )
            os.ftruncate(self.fd, self.size)
            if self.size and allocate:
                self._fallocate()
        except OSError as exc:
            if exc.errno in NO_SPACE:
                self._give_back()
                raise DownloadError(
                    f"{exc.strerror}: could not reserve {_space(self.size)} for {self.path}; removed it,"
                    " to give the space back"
                ) from None
            self.close()
            raise DownloadError(f"cannot make room for {self.path} ({self.size} bytes): {exc.strerror}") from None

    def _fallocate(self) -> None:
        try:
            os.posix_fallocate(self.fd, 0, self.size)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise

    def write(self, offset: int, data: memoryview) -> None:
        """Called from worker threads; pwrite needs no shared file position. The descriptor is
        not closed while a write is in flight (`close` waits), and a write that comes after it
        is closed is refused (a receiving thread may finish a chunk after the download ended)."""
        with self._writes:
            if self.fd < 0:
                raise DownloadError(f"cannot write {self.path}: the download is over")
            self._writing += 1
        try:
            if self._direct >= 0 and not (offset | len(data)) % DIRECT_ALIGN:
                try:
                    written = os.pwrite(self._direct, data, offset)
                    data, offset = data[written:], offset + written
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # (EINVAL: not aligned after all; through the cache)
                        raise
            while data:
                written = os.pwrite(self.fd, data, offset)
                data, offset = data[written:], offset + written
        except OSError as exc:
            if exc.errno in NO_SPACE:
                self._no_space = True  # given back on close, once no other write is in flight
                raise DownloadError(
                    f"cannot write {self.path}: {exc.strerror}; it is removed to give the space back"
                ) from None
            raise DownloadError(f"cannot write {self.path}: {exc.strerror}") from None
        finally:
            with self._writes:
                self._writing -= 1
                self._writes.notify_all()

    def finish(self) -> None:
        """fsync, then give the file its final name (atomically) and fsync the folder."""
        folder = -1
        try:
            os.fsync(self.fd)
            folder = os.open(self.final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                # Linked through the descriptor (linkat with AT_SYMLINK_FOLLOW, which a dir_fd
                # makes os.link use): the final name gets the file we wrote, whatever the part's
                # name has become; a link never replaces an existing file.
                os.link(f"/proc/self/fd/{self.fd}", self.final.name, dst_dir_fd=folder)
            except FileExistsError:
                raise FinalExists(
                    f"{self.final} appeared during the download; the verified copy is kept at {self.path}"
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.ENOENT):
                    raise
                # No hard links here (or no /proc): rename the part, if it is still ours.
                if not self._still_ours():
                    raise DownloadError(f"{self.path} was replaced during the download") from None
                if os.path.lexists(self.final):
                    raise DownloadError(f"{self.final} appeared during the download") from None
                os.replace(self.path, self.final)
            else:
                if self._still_ours():
                    os.unlink(self.path)
            os.fsync(folder)
        except OSError as exc:
            raise DownloadError(f"cannot finish {self.final}: {exc.strerror}") from None
        finally:
            if folder >= 0:
                os.close(folder)
            self.close()

    def _still_ours(self) -> bool:
        try:
            st, ours = os.lstat(self.path), os.fstat(self.fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino)

    def _give_back(self) -> None:
        """No room: free every block of the part file (now, even while a peer still reads it), remove it."""
        self._no_space = False
        if self.fd < 0:
            return
        try:
            os.ftruncate(self.fd, 0)
            if self._still_ours():
                os.unlink(self.path)
        except OSError as exc:
            log.warning("part file not removed", path=str(self.path), error=exc.strerror)
        self.close()

    def close(self) -> None:
        with self._writes:
            self._writes.wait_for(lambda: not self._writing)
            if self._no_space:
                self._give_back()  # (closes the descriptor)
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            if self._direct >= 0:
                os.close(self._direct)
                self._direct = -1
