"""The peer protocol over TCP, without I/O.

Every frame is `type u8 | length u32 | body`. Control bodies are small fixed binary layouts; a
CHUNK frame's body is a 36-byte header (file id, chunk index) followed by the raw payload, so a
seeder can `sendfile` the payload and a leecher can receive it straight into a preallocated
buffer. `FrameReader` follows the buffered-protocol shape: the shell asks `get_buffer()` for
where the next bytes go, reports `buffer_updated(n)`, then drains `next_event()`. It reads no
byte past the current frame, and checks every length against its limit before allocating.
"""

from __future__ import annotations

import mmap
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from .errors import LocalProtocolError, RemoteProtocolError
from .limits import MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_CONTROL_FRAME, MAX_ERROR_TEXT
from .manifest import max_manifest_bytes

FRAME_HEADER = struct.Struct("!BI")
_ID_INDEX = struct.Struct("!32sI")
_HELLO = struct.Struct("!HH")
_HAVE_HEAD = struct.Struct("!32sI")
_ERROR_HEAD = struct.Struct("!B32sI")
FILE_ID_BYTES = 32


class FrameType(IntEnum):
    HELLO = 1
    GET_MANIFEST = 2
    MANIFEST = 3
    GET_HAVE = 4
    HAVE = 5
    REQUEST = 6
    CHUNK = 7
    ERROR = 8
    AUTH = 9
    ANNOUNCE = 10
    DECLINE = 11


class ErrorCode(IntEnum):
    UNKNOWN_FILE = 1
    BAD_INDEX = 2
    BAD_REQUEST = 3
    UNSUPPORTED_VERSION = 4
    UNAVAILABLE = 5  # the seeder cannot read the file right now
    UNAUTHORIZED = 6  # no proof of the swarm secret
    ELSEWHERE = 7  # an origin's answer to a chunk it did not offer and another peer already has: ask the peers


FLAG_AUTH = 1  # HELLO flag: the sender holds the swarm secret; its 16-byte nonce follows
FLAG_ANNOUNCE = 2  # HELLO flag: the sender sends and understands ANNOUNCE frames
FLAG_SHARES = 4  # HELLO flag: the sender serves what it downloads (an origin may hand it offers)
NONCE_BYTES = 16
MAX_ANNOUNCED = 1024  # chunk indices in one ANNOUNCE frame


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    flags: int = 0
    nonce: bytes = b""


@dataclass(frozen=True, slots=True)
class Auth:
    """Proof of the swarm secret: an HMAC over both HELLO nonces (see p2p_shared.auth)."""

    proof: bytes


@dataclass(frozen=True, slots=True)
class GetManifest:
    file_id: bytes


@dataclass(frozen=True, slots=True)
class ManifestData:
    file_id: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class GetHave:
    file_id: bytes


@dataclass(frozen=True, slots=True)
class Have:
    """Which chunks the sender holds: bit i (most significant bit first) is chunk i."""

    file_id: bytes
    num_chunks: int
    bitfield: bytes

    @classmethod
    def full(cls, file_id: bytes, num_chunks: int) -> Have:
        return cls.of(file_id, num_chunks, range(num_chunks))

    @classmethod
    def of(cls, file_id: bytes, num_chunks: int, indices) -> Have:
        bits = bytearray(-(-num_chunks // 8))
        for i in indices:
            bits[i >> 3] |= 0x80 >> (i & 7)
        return cls(file_id, num_chunks, bytes(bits))

    def has(self, index: int) -> bool:
        return 0 <= index < self.num_chunks and bool(self.bitfield[index >> 3] & (0x80 >> (index & 7)))

    def indices(self) -> set[int]:
        return {i for i in range(self.num_chunks) if self.has(i)}


@dataclass(frozen=True, slots=True)
class Announce:
    """Chunks the sender has verified since its HAVE (or its last ANNOUNCE), in either direction:
    a holder tells the peers fetching from it, a downloader tells the holders it fetches from."""

    file_id: bytes
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Decline:
    """From a downloader to an origin: chunks it offered that we are fetching elsewhere, so
    that it offers us others instead (p2p_shared.offers). Advisory: they may still be asked for."""

    file_id: bytes
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Request:
    file_id: bytes
    index: int


@dataclass(frozen=True, slots=True, eq=False)
class Chunk:
    """A received chunk. `data` is a view of `buffer`, which came from the reader's allocator."""

    file_id: bytes
    index: int
    data: memoryview
    buffer: bytearray | mmap.mmap


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    message: str
    file_id: bytes = bytes(FILE_ID_BYTES)
    index: int = 0


Event = Hello | Auth | GetManifest | ManifestData | GetHave | Have | Announce | Decline | Request | Chunk | Error


def _frame(kind: FrameType, body: bytes) -> bytes:
    return FRAME_HEADER.pack(kind, len(body)) + body


def _check_id(file_id: bytes) -> bytes:
    if len(file_id) != FILE_ID_BYTES:
        raise LocalProtocolError("file id must be 32 bytes")
    return file_id


def encode(event: Event) -> bytes:
    """The exact bytes of one frame (for CHUNK, header and payload together)."""
    match event:
        case Hello(version, flags, nonce):
            if len(nonce) not in (0, NONCE_BYTES):
                raise LocalProtocolError("HELLO nonce must be empty or 16 bytes")
            return _frame(FrameType.HELLO, _HELLO.pack(version, flags) + nonce)
        case Auth(proof):
            if len(proof) != 32:
                raise LocalProtocolError("AUTH proof must be 32 bytes")
            return _frame(FrameType.AUTH, proof)
        case GetManifest(file_id):
            return _frame(FrameType.GET_MANIFEST, _check_id(file_id))
        case ManifestData(file_id, data):
            return _frame(FrameType.MANIFEST, _check_id(file_id) + data)
        case GetHave(file_id):
            return _frame(FrameType.GET_HAVE, _check_id(file_id))
        case Have(file_id, num_chunks, bitfield):
            return _frame(FrameType.HAVE, _HAVE_HEAD.pack(_check_id(file_id), num_chunks) + bitfield)
        case Announce(file_id, indices) | Decline(file_id, indices):
            kind = FrameType.ANNOUNCE if isinstance(event, Announce) else FrameType.DECLINE
            if not 0 < len(indices) <= MAX_ANNOUNCED:
                raise LocalProtocolError(f"{kind.name} carries 1 to {MAX_ANNOUNCED} chunk indices")
            return _frame(kind, _check_id(file_id) + struct.pack(f"!{len(indices)}I", *indices))
        case Request(file_id, index):
            return _frame(FrameType.REQUEST, _ID_INDEX.pack(_check_id(file_id), index))
        case Chunk(file_id, index, data, _):
            return chunk_header(file_id, index, len(data)) + bytes(data)
        case Error(code, message, file_id, index):
            text = message.encode("utf-8")[:MAX_ERROR_TEXT]
            return _frame(FrameType.ERROR, _ERROR_HEAD.pack(code, _check_id(file_id), index) + text)
    raise LocalProtocolError(f"cannot encode {event!r}")


def chunk_header(file_id: bytes, index: int, length: int) -> bytes:
    """Frame header and chunk header of a CHUNK frame; `length` payload bytes follow raw."""
    if not 0 <= length <= MAX_CHUNK_SIZE:
        raise LocalProtocolError(f"chunk payload of {length} bytes exceeds the limit")
    return FRAME_HEADER.pack(FrameType.CHUNK, _ID_INDEX.size + length) + _ID_INDEX.pack(
        _check_id(file_id), index
    )


def manifest_header(file_id: bytes, length: int) -> bytes:
    """Frame header and file id of a MANIFEST frame; the `length` manifest bytes follow."""
    return FRAME_HEADER.pack(FrameType.MANIFEST, FILE_ID_BYTES + length) + _check_id(file_id)


# Body length bounds per frame type: (minimum, maximum). Checked before allocating the body.
_BOUNDS = {
    FrameType.HELLO: (_HELLO.size, _HELLO.size + NONCE_BYTES),
    FrameType.AUTH: (32, 32),
    FrameType.GET_MANIFEST: (FILE_ID_BYTES, FILE_ID_BYTES),
    FrameType.MANIFEST: (FILE_ID_BYTES, FILE_ID_BYTES + max_manifest_bytes()),
    FrameType.GET_HAVE: (FILE_ID_BYTES, FILE_ID_BYTES),
    FrameType.HAVE: (_HAVE_HEAD.size, _HAVE_HEAD.size + MAX_CHUNKS // 8),
    FrameType.ANNOUNCE: (FILE_ID_BYTES + 4, FILE_ID_BYTES + 4 * MAX_ANNOUNCED),
    FrameType.DECLINE: (FILE_ID_BYTES + 4, FILE_ID_BYTES + 4 * MAX_ANNOUNCED),
    FrameType.REQUEST: (_ID_INDEX.size, _ID_INDEX.size),
    FrameType.CHUNK: (_ID_INDEX.size, _ID_INDEX.size + MAX_CHUNK_SIZE),
    FrameType.ERROR: (_ERROR_HEAD.size, min(MAX_CONTROL_FRAME, _ERROR_HEAD.size + MAX_ERROR_TEXT)),
}

# The frames each side receives, before and after the handshake. Any other type is refused by
# its header, before its body is allocated; before the handshake only frames of a few dozen
# bytes get through (a MANIFEST header claiming 32 MiB is refused with nothing allocated).
SERVER_HANDSHAKE = frozenset({FrameType.HELLO, FrameType.AUTH, FrameType.GET_MANIFEST, FrameType.GET_HAVE, FrameType.REQUEST})
SERVER_RECEIVES = SERVER_HANDSHAKE | {FrameType.HAVE, FrameType.ANNOUNCE, FrameType.DECLINE}
CLIENT_HANDSHAKE = frozenset({FrameType.HELLO, FrameType.AUTH, FrameType.ERROR})
CLIENT_RECEIVES = CLIENT_HANDSHAKE | {FrameType.MANIFEST, FrameType.HAVE, FrameType.ANNOUNCE, FrameType.CHUNK}

_HEADER, _BODY, _CHUNK_HEAD, _PAYLOAD, _BROKEN = range(5)
_FRAME_TYPES = {int(t): t for t in FrameType}


class FrameReader:
    """Turns a byte stream into events.

    `allocate(n)` returns a writable buffer of at least n bytes for a chunk payload (a pool in
    the leecher); it may raise RemoteProtocolError to refuse a payload size it did not ask for.
    `accept`: the frame types taken now (None: all); the caller widens it once the handshake
    is done. Others are refused on their header, before anything is allocated.
    """

    def __init__(
        self,
        allocate: Callable[[int], bytearray | mmap.mmap] = bytearray,
        max_payload: int = MAX_CHUNK_SIZE,
        accept: frozenset[FrameType] | None = None,
    ) -> None:
        self._allocate = allocate
        self.max_payload = max_payload
        self.accept = accept
        self._head = bytearray(FRAME_HEADER.size + _ID_INDEX.size)
        self._events: deque[Event] = deque()
        self._kind = FrameType.HELLO
        self._length = 0
        self._payload: bytearray | None = None
        self._expect(_HEADER, memoryview(self._head)[: FRAME_HEADER.size])

    def _expect(self, state: int, target: memoryview) -> None:
        self._state, self._target, self._filled = state, target, 0

    def get_buffer(self) -> memoryview:
        if self._state == _BROKEN:
            raise LocalProtocolError("reader used after a protocol error")
        return self._target[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        while self._filled == len(self._target) and self._state != _BROKEN:
            try:
                self._advance()
            except RemoteProtocolError:
                self._state = _BROKEN
                raise

    def receive_data(self, data: bytes) -> None:
        """Copying convenience for stream-based shells and tests."""
        view = memoryview(data)
        while view:
            target = self.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def receive_frame(self, data: memoryview) -> int:
        """Copy in bytes of `data` up to the end of the next whole frame; returns how many were
        taken. The caller can then act on that frame (and change `accept`) before the rest.
        A whole control frame at the start of `data` is decoded where it is, with no copy."""
        if self._state == _HEADER and not self._filled and not self._events and len(data) >= FRAME_HEADER.size:
            kind, length = FRAME_HEADER.unpack_from(data)
            end = FRAME_HEADER.size + length
            if kind != FrameType.CHUNK and len(data) >= end:
                try:
                    self._events.append(_decode_body(self._check_header(kind, length), data[FRAME_HEADER.size : end]))
                except RemoteProtocolError:
                    self._state = _BROKEN
                    raise
                return end
        taken = 0
        while taken < len(data) and not self._events:
            target = self.get_buffer()
            n = min(len(target), len(data) - taken)
            target[:n] = data[taken : taken + n]
            taken += n
            self.buffer_updated(n)
        return taken

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def at_frame_boundary(self) -> bool:
        """True when no frame is partly received (EOF here is a clean close)."""
        return self._state == _HEADER and self._filled == 0

    def _check_header(self, kind: int, length: int) -> FrameType:
        """The frame's type, if we take it now and its length is within its bounds."""
        frame_type = _FRAME_TYPES.get(kind)
        if frame_type is None:
            raise RemoteProtocolError(f"unknown frame type {kind}")
        if self.accept is not None and frame_type not in self.accept:
            raise RemoteProtocolError(f"unexpected {frame_type.name} frame")
        low, high = _BOUNDS[frame_type]
        if frame_type == FrameType.CHUNK:
            high = _ID_INDEX.size + self.max_payload
        if not low <= length <= high:
            raise RemoteProtocolError(f"{frame_type.name} frame of {length} bytes out of bounds")
        return frame_type

    def _advance(self) -> None:
        if self._state == _HEADER:
            kind, length = FRAME_HEADER.unpack_from(self._head)
            self._kind = self._check_header(kind, length)
            self._length = length
            if self._kind == FrameType.CHUNK:
                self._expect(_CHUNK_HEAD, memoryview(self._head)[FRAME_HEADER.size :])
            else:
                self._expect(_BODY, memoryview(bytearray(length)))
        elif self._state == _BODY:
            self._events.append(_decode_body(self._kind, self._target.obj))
            self._expect(_HEADER, memoryview(self._head)[: FRAME_HEADER.size])
        elif self._state == _CHUNK_HEAD:
            size = self._length - _ID_INDEX.size
            buffer = self._allocate(size)
            self._payload = buffer
            self._expect(_PAYLOAD, memoryview(buffer)[:size])
        elif self._state == _PAYLOAD:
            file_id, index = _ID_INDEX.unpack_from(self._head, FRAME_HEADER.size)
            assert self._payload is not None
            self._events.append(Chunk(file_id, index, self._target, self._payload))
            self._payload = None
            self._expect(_HEADER, memoryview(self._head)[: FRAME_HEADER.size])


def _decode_body(kind: FrameType, body: bytearray | memoryview) -> Event:
    if kind == FrameType.HELLO:
        nonce = bytes(body[_HELLO.size :])
        if len(nonce) not in (0, NONCE_BYTES):
            raise RemoteProtocolError("HELLO nonce must be empty or 16 bytes")
        return Hello(*_HELLO.unpack_from(body), nonce)
    if kind == FrameType.AUTH:
        return Auth(bytes(body))
    if kind == FrameType.GET_MANIFEST:
        return GetManifest(bytes(body))
    if kind == FrameType.MANIFEST:
        return ManifestData(bytes(body[:FILE_ID_BYTES]), bytes(body[FILE_ID_BYTES:]))
    if kind == FrameType.GET_HAVE:
        return GetHave(bytes(body))
    if kind == FrameType.HAVE:
        file_id, num_chunks = _HAVE_HEAD.unpack_from(body)
        bitfield = bytes(body[_HAVE_HEAD.size :])
        if num_chunks > MAX_CHUNKS or len(bitfield) != -(-num_chunks // 8):
            raise RemoteProtocolError("HAVE bitfield does not match its chunk count")
        spare = len(bitfield) * 8 - num_chunks
        if spare and bitfield[-1] & ((1 << spare) - 1):
            raise RemoteProtocolError("HAVE bitfield has bits set past its chunk count")
        return Have(file_id, num_chunks, bitfield)
    if kind in (FrameType.ANNOUNCE, FrameType.DECLINE):
        count, spare = divmod(len(body) - FILE_ID_BYTES, 4)
        if spare:
            raise RemoteProtocolError(f"{kind.name} body is not whole chunk indices")
        indices = struct.unpack_from(f"!{count}I", body, FILE_ID_BYTES)
        return (Announce if kind == FrameType.ANNOUNCE else Decline)(bytes(body[:FILE_ID_BYTES]), indices)
    if kind == FrameType.REQUEST:
        return Request(*_ID_INDEX.unpack(body))
    if kind == FrameType.ERROR:
        code, file_id, index = _ERROR_HEAD.unpack_from(body)
        try:
            error_code = ErrorCode(code)
        except ValueError:
            raise RemoteProtocolError(f"unknown error code {code}") from None
        message = bytes(body[_ERROR_HEAD.size :]).decode("utf-8", "replace")
        return Error(error_code, message, file_id, index)
    raise RemoteProtocolError(f"unexpected frame {kind.name}")  # pragma: no cover - CHUNK has its own path
