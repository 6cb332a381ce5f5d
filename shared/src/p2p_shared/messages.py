"""Tracker messages: one JSON object per UDP datagram, a pydantic model per type.

Every message carries `type`, the protocol version `v` and a transaction id `txn` that the
answer echoes, so a client can match answers to retried requests. A datagram is at most
MAX_DATAGRAM bytes in either direction.

Version 2 adds partial holders: `register.partial`, `lookup.port` and `lookup.host`,
`peers.partial` and `files[].partial`. Version 3 adds a cursor through the file list
(`list_files.after`, `files.next`) and the error codes `forbidden` and `unavailable` (the
tracker's registry store did not answer; version 3 clients built before it drop it as invalid,
so they retry as for a lost answer). Version 4 adds `drop`: a holder stops holding some files and
keeps its other registrations. Version 5 (TRACKER_VERSION) adds `claim` and its answer `lease`:
one holder at a time may hold a named lease for a while, so that of many hosts wanting the same
thing from outside the swarm (a blob from a registry) one fetches it and the others wait. The tracker answers a request in the
version it was asked in; a message that carries a field (or is a type) of a later version than its
own is malformed, and an answer never carries one (older clients refuse unknown keys).

The tracker never answers an address that has not proven itself (see p2p_shared.auth) with
more bytes than it sent, so clients pad short requests: `encode_request`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from . import TRACKER_VERSION
from .errors import LocalProtocolError, RemoteProtocolError
from .limits import (
    MAX_CHUNK_SIZE,
    MAX_DATAGRAM,
    MAX_FILE_SIZE,
    MAX_FILES_PER_ANSWER,
    MAX_FILES_PER_REGISTER,
    MAX_HOST_CHARS,
    MAX_PEERS_PER_ANSWER,
)
from .names import check_file_name

FileId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
FileName = Annotated[str, Field(max_length=255), AfterValidator(check_file_name)]
Port = Annotated[int, Field(ge=1, le=65535)]
_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]+$")
LeaseKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:+-]{1,128}$")]


def _check_host(host: str) -> str:
    if not _HOST_RE.match(host):
        raise ValueError("host must be a host name or an IP address")
    return host


Host = Annotated[str, Field(min_length=1, max_length=MAX_HOST_CHARS), AfterValidator(_check_host)]
# `unknown_seeder` means "unknown holder" (of either kind); the name stays for version 1 clients.
# `forbidden` (version 3): an address or a holder the sender may not speak for.
# `unavailable` (version 3): the tracker's registry store did not answer; ask again later.
ErrorCode = Literal[
    "malformed", "unsupported_version", "unknown_seeder", "not_found", "full", "connect_first", "forbidden",
    "unavailable",
]
TRACKER_VERSIONS = (1, 2, 3, 4, TRACKER_VERSION)  # the versions the tracker answers


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: int = Field(TRACKER_VERSION, ge=0, le=255)
    txn: int = Field(0, ge=0, le=2**32 - 1)


def _check_since(message: _Message, version: int, *fields: str) -> None:
    """A message older than `version` leaves the fields that version added unset."""
    if message.v < version:
        late = [name for name in fields if getattr(message, name) not in (None, False)]
        if late:
            raise ValueError(f"{', '.join(late)} needs protocol version {version}")


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    file_id: FileId
    name: FileName
    size: int = Field(ge=0, le=MAX_FILE_SIZE)
    chunk_size: int = Field(ge=1, le=MAX_CHUNK_SIZE)


class FileSummary(FileEntry):
    seeders: int = Field(ge=0)  # complete holders
    partial: int | None = Field(None, ge=0)  # v2: partial holders


class ProvenRequest(_Message):
    """A request that must carry a valid connection id (see p2p_shared.auth)."""

    conn: int | None = Field(None, ge=0, le=2**64 - 1)  # connection id from `connected`


class Connect(_Message):
    """Ask for a connection id: proof that the sender receives at its address."""

    type: Literal["connect"] = "connect"


class Connected(_Message):
    type: Literal["connected"] = "connected"
    conn: int = Field(ge=0, le=2**64 - 1)


class Register(ProvenRequest):
    """A holder announces files it holds. Repeated registrations add files, and each one says
    how the sender holds the files it lists: in part (a leecher downloading) or complete."""

    type: Literal["register"] = "register"
    port: Port
    host: Host | None = None  # advertised host; the datagram's source address otherwise
    files: list[FileEntry] = Field(default_factory=list, max_length=MAX_FILES_PER_REGISTER)
    partial: StrictBool = False  # v2: JSON true or false, nothing else

    @model_validator(mode="after")
    def _v1(self) -> Register:
        _check_since(self, 2, "partial")
        return self


class Heartbeat(ProvenRequest):
    type: Literal["heartbeat"] = "heartbeat"
    port: Port
    host: Host | None = None


class Unregister(ProvenRequest):
    type: Literal["unregister"] = "unregister"
    port: Port
    host: Host | None = None


class Drop(ProvenRequest):
    """A holder no longer holds `files` (v4): evicted from a cache, say. Its other files stay
    registered, and it stays a holder even with none left; unknown ids are ignored."""

    type: Literal["drop"] = "drop"
    port: Port
    host: Host | None = None
    files: list[FileId] = Field(min_length=1, max_length=MAX_FILES_PER_REGISTER)

    @model_validator(mode="after")
    def _v4(self) -> Drop:
        if self.v < 4:
            raise ValueError("drop needs protocol version 4")
        return self


class Claim(ProvenRequest):
    """Ask for the lease on `key` for the holder at `port` (v5), or give it back (`release`). The
    answer names the lease's holder: the sender if it was free, expired or already the sender's
    (renewed), another holder otherwise. A holder renews it before its `ttl` runs out."""

    type: Literal["claim"] = "claim"
    key: LeaseKey
    port: Port
    host: Host | None = None
    release: StrictBool = False

    @model_validator(mode="after")
    def _v5(self) -> Claim:
        if self.v < 5:
            raise ValueError("claim needs protocol version 5")
        return self


class Lookup(ProvenRequest):
    """Which live holders have this file? Exactly one of `name` and `file_id`.

    A holder that looks up gives its own serving `port` (and advertised `host`, if it has one) so
    that the answer leaves it out."""

    type: Literal["lookup"] = "lookup"
    name: FileName | None = None
    file_id: FileId | None = None
    port: Port | None = None  # v2
    host: Host | None = None  # v2; the datagram's source address otherwise

    @model_validator(mode="after")
    def _one_key(self) -> Lookup:
        if (self.name is None) == (self.file_id is None):
            raise ValueError("lookup needs exactly one of name and file_id")
        _check_since(self, 2, "port", "host")
        return self


class ListFiles(ProvenRequest):
    """A page of the files on the network, in file id order: those after `after` (v3), if given."""

    type: Literal["list_files"] = "list_files"
    after: FileId | None = None  # v3: the `next` of the previous page

    @model_validator(mode="after")
    def _v3(self) -> ListFiles:
        _check_since(self, 3, "after")
        return self


class Ack(_Message):
    """Answer to register, heartbeat, unregister and drop; `interval` is the heartbeat period wanted."""

    type: Literal["ack"] = "ack"
    interval: float = Field(gt=0)


class Lease(_Message):
    """Answer to claim (v5): who holds the lease now (None: nobody, after a release), whether that
    is the sender's holder (`mine`: a sender does not always know its own address as the tracker
    sees it), and for how many more seconds."""

    type: Literal["lease"] = "lease"
    holder: tuple[Host, Port] | None = None
    mine: StrictBool = False
    ttl: float = Field(0.0, ge=0)


class Peers(_Message):
    """Complete holders in `peers`; partial holders in `partial` (v2 answers only, maybe empty)."""

    type: Literal["peers"] = "peers"
    file: FileEntry | None = None
    peers: list[tuple[Host, Port]] = Field(default_factory=list, max_length=MAX_PEERS_PER_ANSWER)  # [host, port]
    partial: list[tuple[Host, Port]] | None = Field(None, max_length=MAX_PEERS_PER_ANSWER)  # v2

    @model_validator(mode="after")
    def _v1(self) -> Peers:
        _check_since(self, 2, "partial")
        return self


class Files(_Message):
    """One page of the file list; `total` counts every file, `next` (v3) is the cursor for the
    next page, absent on the last."""

    type: Literal["files"] = "files"
    files: list[FileSummary] = Field(default_factory=list, max_length=MAX_FILES_PER_ANSWER)
    total: int = Field(0, ge=0)
    next: FileId | None = None  # v3

    @model_validator(mode="after")
    def _versions(self) -> Files:
        if self.v == 1 and any(f.partial is not None for f in self.files):
            raise ValueError("partial needs protocol version 2")
        _check_since(self, 3, "next")
        return self


class ErrorReply(_Message):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str = Field("", max_length=512)

    @model_validator(mode="after")
    def _v3(self) -> ErrorReply:
        if self.code in ("forbidden", "unavailable") and self.v < 3:
            raise ValueError(f"code {self.code} needs protocol version 3")
        return self


Request = Connect | Register | Heartbeat | Unregister | Drop | Claim | Lookup | ListFiles
Reply = Connected | Ack | Lease | Peers | Files | ErrorReply
Message = Request | Reply

_ADAPTER: TypeAdapter[Message] = TypeAdapter(Annotated[Message, Field(discriminator="type")])


def decode(data: bytes) -> Message:
    """Parse one datagram; RemoteProtocolError says in one line what was wrong with it."""
    if len(data) > MAX_DATAGRAM:
        raise RemoteProtocolError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    try:
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise RemoteProtocolError(f"malformed datagram: {where}: {first['msg']}") from None


def encode(message: Message) -> bytes:
    """The datagram for `message`: unset fields left out, and an error's empty text."""
    empty = isinstance(message, ErrorReply) and not message.message
    data = message.model_dump_json(exclude_none=True, exclude={"message"} if empty else None).encode()
    if len(data) > MAX_DATAGRAM:
        raise LocalProtocolError(f"{message.type} message of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def _longest_unproven_answer(request: Request) -> int:
    """The size of the largest answer the tracker may give `request` before its sender is proven:
    a connection id for `connect`, a `connect_first` error for any other request."""
    if isinstance(request, Connect):
        answer: Reply = Connected(v=request.v, txn=2**32 - 1, conn=2**64 - 1)
    else:
        answer = ErrorReply(v=request.v, txn=2**32 - 1, code="connect_first")
    return len(encode(answer))


def encode_request(request: Request) -> bytes:
    """A request as a client sends it: padded with JSON whitespace (which every tracker version
    reads) to the size of its longest unproven answer, which the tracker then may send."""
    return encode(request).ljust(_longest_unproven_answer(request))
