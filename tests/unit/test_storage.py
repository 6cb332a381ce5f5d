"""The part file and the final rename, on a real temporary folder."""

import errno
import hashlib
import mmap
import os
import socket

import pytest
import structlog

from p2p_shared import storage as output
from p2p_shared.storage import PartFile, verified_chunks
from p2p_shared.errors import DownloadError
from p2p_shared.manifest import Manifest


def manifest_of(data: bytes, chunk: int = 4) -> Manifest:
    digests = b"".join(hashlib.sha256(data[i : i + chunk]).digest() for i in range(0, len(data), chunk))
    return Manifest(name="f.bin", size=len(data), chunk_size=chunk, digests=digests)


def test_write_at_offsets_then_finish(tmp_path):
    final = tmp_path / "f.bin"
    part = PartFile(final, 10)
    part.write(4, memoryview(b"efgh"))
    part.write(0, memoryview(b"abcd"))
    part.write(8, memoryview(b"ij"))
    assert not final.exists() and part.path.exists()
    part.finish()
    assert final.read_bytes() == b"abcdefghij" and not part.path.exists()


def test_finish_never_replaces_an_existing_file(tmp_path):
    final = tmp_path / "f.bin"
    part = PartFile(final, 2)
    part.write(0, memoryview(b"ab"))
    final.write_bytes(b"precious")
    with pytest.raises(DownloadError, match="appeared during the download"):
        part.finish()
    assert final.read_bytes() == b"precious" and part.path.read_bytes() == b"ab"


def test_verified_chunks_finds_good_and_damaged_chunks(tmp_path):
    data = b"0123456789"
    m = manifest_of(data)
    path = tmp_path / "f.bin.part"
    path.write_bytes(b"0123XXXX89")
    assert verified_chunks(path, m) == {0, 2}
    path.write_bytes(data[:-1])
    assert verified_chunks(path, m) == set()  # wrong size: nothing trusted
    assert verified_chunks(tmp_path / "missing", m) == set()


def test_a_second_writer_of_the_same_file_downloads_aside(tmp_path):
    final = tmp_path / "f.bin"
    first = PartFile(final, 4)
    second = PartFile(final, 4)  # the lock is per open file: a second leecher process alike
    assert first.path == tmp_path / "f.bin.part"
    assert second.path != first.path and second.path.name.startswith("f.bin.") and second.path.suffix == ".part"
    first.write(0, memoryview(b"abcd"))
    second.write(0, memoryview(b"wxyz"))
    assert first.path.read_bytes() == b"abcd"  # neither writes under the other
    first.close()
    second.close()
    third = PartFile(final, 4)  # the lock went with the first writer
    assert third.path == first.path and third.resumed
    third.close()


def test_reserve_sizes_the_part_file_and_a_resumed_one_keeps_its_bytes(tmp_path):
    final = tmp_path / "f.bin"
    part = PartFile(final, 10)
    part.reserve()
    assert part.path.stat().st_size == 10 and not part.resumed
    part.write(0, memoryview(b"abcd"))
    part.close()
    again = PartFile(final, 10)
    assert again.resumed
    again.reserve(keep=True)
    assert again.path.read_bytes()[:4] == b"abcd"
    again.close()


@pytest.mark.parametrize("planted", ["symlink", "hardlink", "fifo"])
def test_a_part_file_that_is_not_a_regular_file_of_ours_is_refused(tmp_path, planted):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    part = tmp_path / "out" / "f.bin.part"
    part.parent.mkdir()
    if planted == "symlink":
        part.symlink_to(outside)
    elif planted == "hardlink":
        os.link(outside, part)
    else:
        os.mkfifo(part)
    with pytest.raises(DownloadError, match="refusing"):
        PartFile(part.parent / "f.bin", 4)
    assert outside.read_bytes() == b"precious"


def test_the_aside_part_file_is_refused_as_well_when_it_is_a_link(tmp_path):
    final = tmp_path / "f.bin"
    first = PartFile(final, 4)  # holds the lock: a second writer goes aside
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    final.with_name(f"f.bin.{os.uname().nodename}-{os.getpid()}.part").symlink_to(outside)
    with pytest.raises(DownloadError, match="symbolic link"):
        PartFile(final, 4)
    first.close()
    assert outside.read_bytes() == b"precious"


def test_finish_links_the_file_written_even_if_its_name_was_replaced(tmp_path):
    final = tmp_path / "f.bin"
    part = PartFile(final, 2)
    part.write(0, memoryview(b"ab"))
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    part.path.rename(tmp_path / "moved.part")
    part.path.symlink_to(outside)  # swapped for a link while we wrote
    part.finish()
    assert final.read_bytes() == b"ab" and not final.is_symlink()
    assert part.path.is_symlink() and outside.read_bytes() == b"precious"  # not ours: left alone


def no_room(monkeypatch, free: int) -> None:
    real = os.fstatvfs

    def fstatvfs(fd):
        st = real(fd)
        return os.statvfs_result((st.f_bsize, 1, st.f_blocks, free, free, *tuple(st)[5:]))

    monkeypatch.setattr(os, "fstatvfs", fstatvfs)


def test_no_room_fails_before_reserving_and_removes_a_part_file_without_progress(tmp_path, monkeypatch):
    no_room(monkeypatch, 1000)
    part = PartFile(tmp_path / "f.bin", 4096)
    with pytest.raises(DownloadError, match="No space left on device: f.bin needs 0.0 MiB more"):
        part.reserve()
    assert list(tmp_path.iterdir()) == []


def test_no_room_keeps_a_part_file_with_verified_chunks_unchanged(tmp_path, monkeypatch):
    final = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"abcd")
    no_room(monkeypatch, 10)
    part = PartFile(final, 1 << 20)
    with pytest.raises(DownloadError, match="the chunks verified in .* are kept"):
        part.reserve(keep=True)
    assert (tmp_path / "f.bin.part").read_bytes() == b"abcd"


def test_a_reservation_that_runs_out_of_space_gives_it_all_back(tmp_path, monkeypatch):
    def fallocate(fd, offset, length):
        os.pwrite(fd, b"x" * 100, 0)  # what ext4 keeps of a failed reservation
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    part = PartFile(tmp_path / "f.bin", 4096)
    with pytest.raises(DownloadError, match="No space left on device.*removed it"):
        part.reserve()
    assert list(tmp_path.iterdir()) == [] and part.fd == -1


def test_a_write_that_runs_out_of_space_removes_the_part_file_on_close(tmp_path, monkeypatch):
    part = PartFile(tmp_path / "f.bin", 8)
    part.reserve()
    part.write(0, memoryview(b"abcd"))
    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(DownloadError, match="No space left on device"):
        part.write(4, memoryview(b"efgh"))
    assert part.path.exists()  # other writes may still be in flight: removed on close
    part.close()
    assert list(tmp_path.iterdir()) == []


def test_only_chunks_with_data_are_read_and_a_hole_of_zeros_is_verified(tmp_path, monkeypatch):
    chunk = 1 << 20  # file system blocks are smaller: holes at chunk granularity
    data = os.urandom(chunk) + bytes(chunk) + os.urandom(chunk) + os.urandom(chunk)
    m = manifest_of(data, chunk)
    path = tmp_path / "f.bin.part"
    with open(path, "wb") as f:
        f.truncate(len(data))
        f.seek(2 * chunk)
        f.write(data[2 * chunk : 3 * chunk])  # chunk 2 written, 0 and 3 never, 1 is zeros
    read = []
    real = output.digest_chunks

    def digest_chunks(fd, size, chunk_size, indices, **kwargs):
        read.extend(indices)
        return real(fd, size, chunk_size, indices, **kwargs)

    monkeypatch.setattr(output, "digest_chunks", digest_chunks)
    with structlog.testing.capture_logs() as logs:
        assert verified_chunks(path, m) == {1, 2}
    assert read == [2]
    assert [(e["chunks"], e["mib"]) for e in logs if e["event"] == "checking chunks on disk"] == [(1, 1.0)]


def test_checking_a_big_file_says_how_far_it_got(tmp_path):
    data = os.urandom(8 * 4096)
    m = manifest_of(data, 4096)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    reporter = output._Reporter(path, len(data), every=0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            reporter(4096)
    assert [e["percent"] for e in logs] == [12.5, 25.0]
    assert verified_chunks(path, m) == set(range(8))


def test_a_write_after_the_part_file_is_closed_is_refused_and_writes_nothing(tmp_path):
    """A receiving thread may finish a chunk after its download ended: its descriptor number
    may be another file's by then, so nothing is written through it."""
    part = PartFile(tmp_path / "f.bin", 8)
    part.reserve()
    part.close()
    with pytest.raises(DownloadError, match="the download is over"):
        part.write(0, memoryview(b"late"))
    assert (tmp_path / "f.bin.part").read_bytes() == bytes(8)


def test_closing_waits_for_the_write_in_flight(tmp_path, monkeypatch):
    import threading

    part = PartFile(tmp_path / "f.bin", 8)
    part.reserve()
    entered, release, closer_waits = threading.Event(), threading.Event(), threading.Event()
    real_pwrite = os.pwrite

    def slow_pwrite(fd, data, offset):
        entered.set()
        assert release.wait(30)
        return real_pwrite(fd, data, offset)

    class Watched(threading.Condition):
        def wait_for(self, predicate, timeout=None):
            if not predicate():
                closer_waits.set()
            return super().wait_for(predicate, timeout)

    monkeypatch.setattr(output.os, "pwrite", slow_pwrite)
    part._writes = Watched()
    writer = threading.Thread(target=part.write, args=(0, memoryview(b"12345678")))
    writer.start()
    assert entered.wait(30)
    closer = threading.Thread(target=part.close)
    closer.start()
    assert closer_waits.wait(30)  # close is waiting for the write ...
    assert part.fd >= 0  # ... with the descriptor open
    release.set()
    writer.join(30)
    closer.join(30)
    assert part.fd == -1
    assert (tmp_path / "f.bin.part").read_bytes() == b"12345678"


def in_page_cache(path, offset: int, length: int) -> bool:
    """Whether the bytes are in the page cache: a read that may not wait for the disk gets them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.preadv(fd, [bytearray(length)], offset, os.RWF_NOWAIT) == length
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            pytest.skip("this file system cannot say what is in the page cache (RWF_NOWAIT)")
        raise
    finally:
        os.close(fd)


def test_aligned_chunks_go_to_the_disk_directly_and_the_rest_through_the_cache(tmp_path):
    try:
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        pytest.skip("no O_DIRECT on this file system")
    os.unlink(tmp_path / "probe")
    page = output.DIRECT_ALIGN
    final = tmp_path / "f.bin"
    part = PartFile(final, 4 * page + 100)
    part.reserve()
    aligned = mmap.mmap(-1, 2 * page)  # page-aligned memory, as the connections' chunk buffers
    aligned.write(b"a" * 2 * page)
    part.write(0, memoryview(aligned))
    skewed = mmap.mmap(-1, page + 1)  # a buffer one byte off a page: the kernel refuses it directly
    skewed.write(b"x" + b"b" * page)
    part.write(2 * page, memoryview(skewed)[1:])
    part.write(3 * page, memoryview(b"c" * (page + 100)))  # the last chunk: not a whole page
    assert not in_page_cache(part.path, 0, 2 * page)  # (written from the buffer to the disk)
    assert in_page_cache(part.path, 2 * page, page) and in_page_cache(part.path, 3 * page, page + 100)
    part.finish()
    assert final.read_bytes() == b"a" * 2 * page + b"b" * page + b"c" * (page + 100)


def test_a_file_system_without_direct_writes_gets_them_through_the_cache(tmp_path, monkeypatch):
    opened = os.open

    def no_direct(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))  # what tmpfs answered before Linux 6.6
        return opened(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_direct)
    final = tmp_path / "f.bin"
    part = PartFile(final, output.DIRECT_ALIGN)
    part.reserve()
    buffer = mmap.mmap(-1, output.DIRECT_ALIGN)
    buffer.write(b"z" * output.DIRECT_ALIGN)
    part.write(0, memoryview(buffer))
    part.finish()
    assert final.read_bytes() == b"z" * output.DIRECT_ALIGN
