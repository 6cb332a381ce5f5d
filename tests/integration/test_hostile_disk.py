"""Hostile disks and seeded folders (issue 12, items 5-8, 12 and 13), on real processes.

The full-disk tests run on a small ext4 image mounted on a loop device: tmpfs hides what ext4
does (a failed `posix_fallocate` keeps the blocks it got). Mounting needs root: without it
these tests skip, under CI they fail.
"""

import contextlib
import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from p2p_shared.hashing import hash_chunks
from p2p_shared.manifest import Manifest
from tests.ci import cannot_run
from tests.host_tools import host_tool
from tools.localswarm import LocalSwarm, random_file, sha256_file

from .conftest import chunks_served
from .hostile import HostilePeer

MiB = 1 << 20
TiB = 1 << 40
BIG_CHUNK = 16 * MiB  # 65,536 chunks for 1 TiB: a 2 MiB manifest


@contextlib.contextmanager
def ext4(where: Path, size: int, *mkfs_args: str):
    """A fresh ext4 file system of `size` bytes (a sparse image), mounted; unmounted and removed after."""
    if os.geteuid() != 0:
        cannot_run("mounting an ext4 image needs root")
    mkfs, mount = host_tool("mkfs.ext4", "e2fsprogs"), host_tool("mount", "mount")
    image, point = where / "ext4.img", where / "ext4"
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run([mkfs, "-q", "-F", *mkfs_args, str(image)], check=True)
    point.mkdir()
    mounted = subprocess.run([mount, "-o", "loop,noinit_itable", str(image), str(point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        image.unlink()
        cannot_run(f"cannot mount an ext4 image on a loop device: {mounted.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)
        image.unlink()


def free_blocks_bytes(path: Path) -> int:
    """Free bytes, root's reserve included (a root leecher's fallocate takes those too)."""
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "lost+found")


def error_lines(service) -> list[str]:
    return [e["event"] for e in service.events() if e.get("level") == "error"]


def huge_manifest(name: str, chunks: dict[int, bytes]) -> Manifest:
    """A valid manifest of a 1 TiB file: `chunks` (index: bytes) are real, the rest random."""
    digests = bytearray(os.urandom(32 * (TiB // BIG_CHUNK)))
    for index, payload in chunks.items():
        digests[32 * index : 32 * index + 32] = hashlib.sha256(payload).digest()
    return Manifest(name, TiB, BIG_CHUNK, bytes(digests))


@pytest.mark.parametrize("leftover", [False, True], ids=["fresh", "after-an-old-failed-run"])
def test_a_manifest_larger_than_the_disk_fails_at_once_and_leaves_the_disk_as_it_was(tmp_path, leftover):
    """Item 5: a 1 TiB file into a 64 MiB ext4; also rerun over the part file an older version
    left there, sparse, with every free block reserved and nothing written (item 6's start)."""
    manifest = huge_manifest("huge.bin", {})
    peer = HostilePeer(random_file(tmp_path / "seed" / "small.bin", 1000), BIG_CHUNK, manifest.encode())
    try:
        with ext4(tmp_path, 64 * MiB) as disk, LocalSwarm(tmp_path, heartbeat=10) as swarm:  # the hostile peer never beats
            free_before = free_blocks_bytes(disk)
            if leftover:
                with open(disk / "huge.bin.part", "wb") as f:
                    f.truncate(TiB)
                    with pytest.raises(OSError):
                        os.posix_fallocate(f.fileno(), 0, TiB)
                assert free_blocks_bytes(disk) < 2 * MiB  # the disk is full (ext4 keeps a few blocks back)
            swarm.start_tracker()
            peer.register(swarm.tracker_port, name="huge.bin")
            leecher = swarm.leecher(peer.file_id, disk)
            assert leecher.wait(60) == 1
            [line] = error_lines(leecher)
            assert "No space left on device" in line and "Traceback" not in leecher.output
            assert peer.requests == 0
            assert ours(disk) == []  # no huge.bin, no huge.bin.part
            # The space is all there: other writers are not starved by our failed reservation.
            assert free_blocks_bytes(disk) >= free_before - MiB
            random_file(disk / "other-writer.bin", 32 * MiB)
    finally:
        peer.close()


def test_an_honest_download_too_big_for_the_free_space_gives_it_back_and_a_rerun_succeeds(tmp_path):
    """Item 7: 32 MiB into an ext4 with about 21 MB free; once space is freed, the rerun works."""
    data = random_file(tmp_path / "seed" / "honest.bin", 32 * MiB)
    with ext4(tmp_path, 64 * MiB) as disk, LocalSwarm(tmp_path) as swarm:
        avail = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        random_file(disk / "filler.bin", avail - 21_000_000)
        free_before = free_blocks_bytes(disk)
        swarm.start_tracker()
        seeder = swarm.add_seeder([data], metrics=True)
        leecher = swarm.leecher("honest.bin", disk)
        assert leecher.wait(60) == 1
        [line] = error_lines(leecher)
        assert "No space left on device" in line and "Traceback" not in leecher.output
        assert chunks_served(seeder.metrics_port) == 0  # refused before any chunk was asked for
        assert ours(disk) == ["filler.bin"]
        assert free_blocks_bytes(disk) >= free_before - MiB
        (disk / "filler.bin").unlink()  # the user frees space and runs it again
        again = swarm.leecher("honest.bin", disk)
        assert again.wait(60) == 0, again.output
        assert sha256_file(disk / "honest.bin") == sha256_file(data)
        assert ours(disk) == ["honest.bin"]


def test_resuming_a_sparse_1_tib_part_file_checks_only_the_chunks_ever_written(tmp_path):
    """Item 6: the part file of a 1 TiB download, space reserved, three chunks written (one of
    them damaged): the rerun checks those three in seconds, not 1 TiB for minutes, and says so."""
    good, damaged = os.urandom(BIG_CHUNK), os.urandom(BIG_CHUNK)
    zeros = bytes(BIG_CHUNK)  # a chunk of zeros is what a hole reads as: it needs no writing
    manifest = huge_manifest("sparse.bin", {3: good, 9: zeros, 7: good, 40000: damaged})
    peer = HostilePeer(random_file(tmp_path / "seed" / "small.bin", 1000), BIG_CHUNK, manifest.encode())
    # A sparse image: mkfs and the reservation write some 100 MiB of metadata, not 1 TiB.
    big = ("-O", "^has_journal", "-N", "128", "-E", "lazy_itable_init=1,nodiscard")
    try:
        with ext4(tmp_path, 1100 << 30, *big) as disk, LocalSwarm(tmp_path, heartbeat=10) as swarm:
            part = disk / "sparse.bin.part"
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, TiB)  # as a run cut short after its reservation leaves it
                for index, payload in ((3, good), (7, good), (40000, bytes([damaged[0] ^ 0xFF]) + damaged[1:])):
                    assert os.pwrite(fd, payload, index * BIG_CHUNK) == BIG_CHUNK  # 40000: one byte off
            finally:
                os.close(fd)
            swarm.start_tracker()
            peer.register(swarm.tracker_port, name="sparse.bin")
            leecher = swarm.leecher(peer.file_id, disk, "--no-share")
            # Hashing all of it takes minutes on two cores; the chunks ever written, moments.
            resumed = leecher.wait_for("resuming", timeout=60)
            leecher.send_signal(signal.SIGKILL)
            leecher.wait(30)
        assert resumed["verified_chunks"] == 3  # 3 and 7 as written, 9 a hole that reads right
        [checking] = [e for e in leecher.events() if e.get("event") == "checking chunks on disk"]
        assert checking["chunks"] == 3 and checking["mib"] == 48  # 3, 7 and 40000: what was written
    finally:
        peer.close()


@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
def test_a_planted_link_at_the_part_file_is_refused_and_nothing_outside_is_written(tmp_path, planted):
    """Item 8: NAME.part planted as a link to a file outside -o."""
    data = random_file(tmp_path / "seed" / "s.bin", 2 * MiB)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious, outside the output folder\n")
    part = out / "s.bin.part"
    if planted == "symlink":
        part.symlink_to(victim)
    else:
        os.link(victim, part)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        swarm.add_seeder([data])
        leecher = swarm.leecher("s.bin", out)
        assert leecher.wait(60) == 1
    assert victim.read_bytes() == b"precious, outside the output folder\n"
    assert not os.path.lexists(out / "s.bin")
    [line] = error_lines(leecher)
    assert "s.bin.part" in line and "refusing" in line, line
    assert "Traceback" not in leecher.output


def test_a_symlink_in_a_seeded_folder_is_neither_announced_nor_served(tmp_path):
    """Item 12: a link in the seeded folder to a private key outside it."""
    folder = tmp_path / "seed"
    data = random_file(folder / "public.bin", MiB)
    key = tmp_path / "private" / "id_ed25519"
    key.parent.mkdir()
    key.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    (folder / "id_ed25519").symlink_to(key)
    with LocalSwarm(tmp_path, heartbeat=10) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([folder])
        ready = [e["file"] for e in seeder.events() if e.get("event") == "file ready"]
        assert ready == ["public.bin"]
        assert swarm.lookup("id_ed25519").file is None
        assert swarm.lookup("public.bin").file is not None
        key_id = Manifest("id_ed25519", key.stat().st_size, 512 * 1024,
                          hash_chunks(key, key.stat().st_size, 512 * 1024)).file_id
        thief = swarm.leecher(key_id, tmp_path / "stolen", "--wait", "1")
        assert thief.wait(60) == 1
        fair = swarm.leecher("public.bin", tmp_path / "out")
        assert fair.wait(60) == 0, fair.output
    assert not (tmp_path / "stolen" / "id_ed25519").exists()
    assert sha256_file(tmp_path / "out" / "public.bin") == sha256_file(data)
    assert "id_ed25519" in seeder.output  # the seeder says what it left out


def edit_in_place_keeping_size_and_mtime(path: Path) -> None:
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"edited in place")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_file_edited_with_size_and_mtime_restored_is_rehashed_on_restart(tmp_path):
    """Item 13: the seeder is stopped, the file edited in place (size and mtime restored), the
    seeder started again: the cached manifest must not be served."""
    data = random_file(tmp_path / "seed" / "edited.bin", 4 * MiB)
    with LocalSwarm(tmp_path, heartbeat=10) as swarm:
        swarm.start_tracker()
        first = swarm.add_seeder([data])
        old_id = first.wait_for("file ready")["file_id"]
        first.stop()
        edit_in_place_keeping_size_and_mtime(data)
        new_id = Manifest("edited.bin", 4 * MiB, 512 * 1024, hash_chunks(data, 4 * MiB, 512 * 1024)).file_id
        assert new_id != old_id
        second = swarm.add_seeder([data])
        ready = second.wait_for("file ready")
        assert ready["cached"] is False and ready["file_id"] == new_id
        leecher = swarm.leecher("edited.bin", tmp_path / "out", "--wait", "2")
        assert leecher.wait(60) == 0, leecher.output
        third = swarm.add_seeder([data])  # unchanged since: the cache serves again
        assert third.wait_for("file ready")["cached"] is True
    assert sha256_file(tmp_path / "out" / "edited.bin") == sha256_file(data)


def test_a_file_edited_while_seeded_with_size_and_mtime_restored_is_not_served(tmp_path):
    """Item 13, while running: the same edit after hashing stops the seeder serving the file."""
    data = random_file(tmp_path / "seed" / "live.bin", 4 * MiB)
    with LocalSwarm(tmp_path, heartbeat=10) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data])
        edit_in_place_keeping_size_and_mtime(data)
        leecher = swarm.leecher("live.bin", tmp_path / "out", "--wait", "2")
        assert leecher.wait(60) == 1
        seeder.wait_for("file changed on disk since it was hashed; not serving it")
        assert not any(e.get("event") == "chunk failed verification" for e in leecher.events())
    assert not (tmp_path / "out" / "live.bin").exists()
