"""A hostile peer on real sockets, speaking the real protocol, misbehaving on purpose."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

from p2p_shared import messages, wire
from p2p_shared.hashing import hash_chunks
from p2p_shared.manifest import Manifest, file_id_of
from tools.localswarm import tracker_request


class HostilePeer:
    """Serves `path` under its true manifest, except as `behaviour` says:

    - "corrupt": every chunk arrives with one byte flipped;
    - "cut": the connection closes halfway through the first chunk's payload;
    - "bad-manifest": the manifest sent is well formed (same name, size and chunk size) but one
      chunk digest is forged, so it does not hash to the file id;
    - bytes: a raw manifest (absurd values, a hostile name) announced and served as is;
    - "empty-have": its HAVE holds no chunk;
    - "bad-have": its HAVE bitfield is one byte longer than the chunk count allows;
    - "wrong-index": asked for chunk i, it sends chunk i+1 (true bytes, not asked for);
    - "other-file": the chunk asked for, true bytes, under another file id;
    - "trickle": the chunk asked for, one byte a second.

    As a partial holder (a leecher that shares; register with `partial=True`):
    - "phantom": its HAVE claims the even chunks and an ANNOUNCE the odd ones, but it holds none
      and answers every request with an error;
    - "absurd-announce": an honest HAVE of the even chunks (served true), then an ANNOUNCE of a
      chunk past the end of the file.
    """

    def __init__(self, path: Path, chunk_size: int, behaviour: str | bytes) -> None:
        size = path.stat().st_size
        self.manifest = Manifest(path.name, size, chunk_size, hash_chunks(path, size, chunk_size))
        self.behaviour = behaviour
        self.announced = behaviour if isinstance(behaviour, bytes) else self.manifest.encode()
        forged = self.manifest.digests[:-32] + hashlib.sha256(b"forged").digest()
        self.forged = Manifest(self.manifest.name, size, chunk_size, forged).encode()
        self.file_id = file_id_of(self.announced)
        self.data = path.read_bytes()
        partial = behaviour in ("phantom", "absurd-announce")
        self.flags = wire.FLAG_ANNOUNCE | wire.FLAG_SHARES if partial else 0
        self.requests = 0
        self.manifests_sent = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        self.server.close()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    async def _handle(self, reader, writer) -> None:
        frames = wire.FrameReader(max_payload=0)
        try:
            while data := await reader.read(65536):
                frames.receive_data(data)
                while (event := frames.next_event()) is not None:
                    answer, hang_up = self._answer(event)
                    if self.behaviour == "trickle" and isinstance(event, wire.Request):
                        for i in range(len(answer)):
                            writer.write(answer[i : i + 1])
                            await writer.drain()
                            await asyncio.sleep(1)
                        continue
                    writer.write(answer)
                    if hang_up:
                        await writer.drain()
                        return
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, event) -> tuple[bytes, bool]:
        match event:
            case wire.Hello():
                return wire.encode(wire.Hello(1, self.flags)), False
            case wire.GetManifest(file_id):
                self.manifests_sent += 1
                body = self.forged if self.behaviour == "bad-manifest" else self.announced
                return wire.encode(wire.ManifestData(file_id, body)), False
            case wire.GetHave(file_id):
                n = self.manifest.num_chunks
                if self.behaviour == "empty-have":
                    return wire.encode(wire.Have.of(file_id, n, ())), False
                if self.behaviour == "bad-have":
                    return wire.encode(wire.Have(file_id, n, bytes(-(-n // 8) + 1))), False
                if not self.flags:
                    return wire.encode(wire.Have.full(file_id, n)), False
                even, odd = tuple(range(0, n, 2)), tuple(range(1, n, 2))
                later = odd if self.behaviour == "phantom" else (n + 7,)
                return wire.encode(wire.Have.of(file_id, n, even)) + wire.encode(wire.Announce(file_id, later)), False
            case wire.Have() | wire.Announce() | wire.Decline():
                return b"", False  # what the downloader holds: of no interest here
            case wire.Request(file_id, index):
                self.requests += 1
                if self.behaviour == "wrong-index":
                    index = (index + 1) % self.manifest.num_chunks
                if self.behaviour == "other-file":
                    file_id = bytes(32)
                if self.behaviour == "phantom":
                    return wire.encode(wire.Error(wire.ErrorCode.UNAVAILABLE, "chunk not held here", file_id, index)), False
                offset, length = self.manifest.chunk_span(index)
                payload = bytearray(self.data[offset : offset + length])
                if self.behaviour in ("corrupt", "bad-manifest") or isinstance(self.behaviour, bytes):
                    payload[length // 2] ^= 0xFF
                frame = wire.encode(wire.Chunk(file_id, index, memoryview(payload), payload))
                if self.behaviour == "cut":
                    return frame[: len(frame) // 2], True
                return frame, False
        raise AssertionError(event)

    def register(self, tracker_port: int, name: str | None = None, partial: bool = False) -> None:
        """Announce the file to the tracker (under `name` when the manifest's own is refused),
        as a complete holder or, with `partial`, as a leecher that shares."""
        entry = messages.FileEntry(
            file_id=self.file_id, name=name or self.manifest.name, size=self.manifest.size,
            chunk_size=self.manifest.chunk_size,
        )
        reply = tracker_request(("127.0.0.1", tracker_port), messages.Register(port=self.port, files=[entry], partial=partial))
        assert reply.type == "ack", reply

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def __enter__(self) -> HostilePeer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
