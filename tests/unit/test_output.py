"""The part file and the final rename, on a real temporary folder."""

import hashlib

import pytest

from p2p_leecher.output import PartFile, verified_chunks
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
