"""The HTTP gateway: any HTTP client gets a file of the swarm, verified, through this host's peer.

`GET /files/{target}` (a file id, or a name as the tracker knows it) answers from the cache with
`sendfile`, or starts the download through the swarm and streams: the response begins once the
first chunk asked for is verified, and bytes go out strictly in order as chunks are verified,
each from the part file with `sendfile`. The chunks just ahead of each reader are fetched first.
Only bytes of chunks that passed SHA-256 are sent; if the download fails, the response is cut
short (the connection aborted), never completed. A client that hangs up leaves the download
running: the file completes into the cache.

Ranges: one range (`bytes=a-b`, `a-`, `-n`) is answered 206; several are answered with the whole
file (200), which HTTP allows and which costs no more than one range; a range past the end
is 416. `If-None-Match` with the file id is 304; `If-Range` with another validator gets the whole
file. Errors are JSON, `{"code", "message"}`, one line in the log at most.

The server is aiohttp's, behind a gate of ours that counts connections per address and drops
a connection whose first request does not arrive in time (the peer protocol must not starve).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import structlog
from aiohttp import web

from p2p_shared.catalog import SeededFile
from p2p_shared.errors import (
    BadTarget,
    CacheFull,
    DownloadError,
    FileNotFound,
    NoHolder,
    P2PError,
    TrackerRejected,
    TrackerUnavailable,
    Unsatisfiable,
)
from p2p_shared.manifest import Manifest, is_file_id
from p2p_shared.names import check_file_name
from p2p_shared.net.cache import HostCache
from p2p_shared.net.download import Download

from .metrics import PeerMetrics

log = structlog.get_logger()

MIN_BLOCK, MAX_BLOCK = 256 << 10, 64 << 20  # bytes per sendfile call, sized to take about a second
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


# -- ranges, without I/O ------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    start: int
    end: int  # exclusive
    partial: bool  # a range was asked for and is answered (206)


def byte_span(header: str | None, size: int) -> Span:
    """The bytes a `Range` header asks for (RFC 9110 14.2). A header that is not one valid
    `bytes=` range, or that asks for several, gets the whole file."""
    whole = Span(0, size, False)
    if not header:
        return whole
    unit, _, ranges = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in ranges:
        return whole
    first, dash, last = ranges.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) or (last and not last.isdigit()):
        return whole
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return Span(max(0, size - n), size, True)
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        return whole  # invalid: ignored
    if start >= size:
        raise Unsatisfiable
    return Span(start, end, True)


def etag_matches(header: str | None, etag: str) -> bool:
    """`If-None-Match`: any of the listed tags (weak comparison), or `*`."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def content_disposition(name: str) -> str:
    ascii_name = name.encode("ascii", "replace").decode().replace("\\", "_").replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def problem(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


# -- the gate: connections per address, and time to the first request -------------------------


class Gate:
    def __init__(self, max_connections: int, per_address: int, first_request: float) -> None:
        self.max_connections, self.per_address, self.first_request = max_connections, per_address, first_request
        self.active = 0
        self.by_address: dict[str, int] = {}
        self.waiting: dict[object, asyncio.TimerHandle] = {}  # transport -> its deadline for a first request

    def admit(self, address: str) -> bool:
        if self.active >= self.max_connections or self.by_address.get(address, 0) >= self.per_address:
            return False
        self.active += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return True

    def leave(self, address: str, transport: object) -> None:
        self.active -= 1
        self.by_address[address] -= 1
        if not self.by_address[address]:
            del self.by_address[address]
        self.served(transport)

    def served(self, transport: object) -> None:
        timer = self.waiting.pop(transport, None)
        if timer is not None:
            timer.cancel()


class _Gated(asyncio.Protocol):
    """In front of aiohttp's protocol: refuses a connection beyond the caps (closed at once),
    and aborts one whose first request does not come within the gate's time."""

    def __init__(self, gate: Gate, inner: asyncio.Protocol) -> None:
        self.gate, self.inner = gate, inner
        self.address: str | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if peer else "?"
        if not self.gate.admit(address):
            transport.abort()
            return
        self.address, self.transport = address, transport
        loop = asyncio.get_running_loop()
        self.gate.waiting[transport] = loop.call_later(self.gate.first_request, transport.abort)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.address is not None:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.address is not None else None

    def connection_lost(self, exc) -> None:
        if self.address is not None:
            self.gate.leave(self.address, self.transport)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


# -- the gateway --------------------------------------------------------------------------------


class Beginning:
    """Awaited before each run of body bytes: the response is prepared (status line and
    headers sent) at the first, and its time to first byte noted, once."""

    def __init__(self, request: web.Request, response: web.StreamResponse, first_byte: Callable[[], None]) -> None:
        self.request, self.response, self.first_byte = request, response, first_byte
        self.prepared = False

    async def __call__(self) -> None:
        if not self.prepared:
            await self.response.prepare(self.request)
            self.first_byte()
            self.prepared = True


class Gateway:
    def __init__(self, settings, cache: HostCache, metrics: PeerMetrics) -> None:
        self.settings = settings
        self.cache = cache
        self.metrics = metrics
        self.allowed = LOOPBACK + tuple(settings.http_allow)
        self.token = _read_token(settings.http_token_file)
        self.gate = Gate(settings.http_max_connections, settings.http_max_connections_per_address, settings.http_timeout)
        self.app = web.Application(middlewares=[self._guard], client_max_size=1 << 16)
        self.app.add_routes([
            web.get("/files", self.list_files, allow_head=False),
            web.get("/files/{target}", self.get_file),  # and HEAD
            web.post("/files/{target}/fetch", self.fetch_file),
            web.delete("/files/{target}", self.delete_file),
        ])
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, keepalive_timeout=self.settings.http_timeout,
            max_line_size=8190, max_field_size=8190, max_headers=64,
        )
        await self._runner.setup()
        factory = self._runner.server
        assert factory is not None
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Gated(self.gate, factory()), host, port, backlog=256)
        except OSError as exc:
            raise P2PError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}") from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- every request ---------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        self.gate.served(request.transport)
        route = _route_of(request)
        try:
            address = ipaddress.ip_address((request.remote or "").split("%")[0])
        except ValueError:
            address = None
        if address is None or not any(address in network for network in self.allowed):
            response: web.StreamResponse = problem(403, "forbidden", f"{request.remote} may not use this gateway (--http-allow)")
        elif self.token is not None and not hmac.compare_digest(
            request.headers.get("Authorization", "").encode(), b"Bearer " + self.token
        ):
            response = problem(401, "unauthorized", "this gateway needs its bearer token (Authorization: Bearer ...)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="p2p-peer"'
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # aiohttp's own (404 of an unknown path, 405): as JSON too
                response = problem(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
            except (ConnectionResetError, BrokenPipeError):  # the client hung up mid-answer (the download goes on)
                log.info("gateway: the client went away", route=route, client=request.remote)
                response = web.Response(status=499)  # nginx's "client closed request"; aiohttp writes nothing
        self.metrics.http_requests.labels(route, str(response.status)).inc()
        return response

    # -- the files -------------------------------------------------------------------------------

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            manifest, local = await self._resolve(_target(request))
        except P2PError as exc:
            return _error_response(exc)
        etag = f'"{manifest.file_id}"'
        headers = {
            "ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
            "Content-Disposition": content_disposition(manifest.name),
        }
        if etag_matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers={"ETag": etag})
        if_range = request.headers.get("If-Range")
        try:
            span = byte_span(request.headers.get("Range") if if_range in (None, etag) else None, manifest.size)
        except Unsatisfiable:
            return web.Response(
                status=416, headers={"Content-Range": f"bytes */{manifest.size}"},
                content_type="application/json", text=json.dumps({"code": "range_not_satisfiable", "message": f"the file has {manifest.size} bytes"}),
            )
        if span.partial:
            headers["Content-Range"] = f"bytes {span.start}-{span.end - 1}/{manifest.size}"
        response = web.StreamResponse(status=206 if span.partial else 200, headers=headers)
        response.content_length = span.end - span.start
        if request.method == "HEAD":
            await response.prepare(request)
            return response
        if local is not None:
            with self.cache.reading(local.raw_id):
                return await self._send_local(request, response, local, span, started)
        try:
            download = self.cache.fetch(manifest.file_id, whole=not (span.partial and self.settings.no_prefetch))
            await download.ready()
        except P2PError as exc:
            return _error_response(exc)
        with self.cache.reading(manifest.raw_id):
            try:
                return await self._stream(request, response, download, manifest, span, started)
            finally:
                if not download.whole and not download.readers and download.task is not None:
                    download.task.cancel()  # --no-prefetch: what the readers read is kept, no more

    async def _resolve(self, target: str) -> tuple[Manifest, SeededFile | None]:
        """The file a target names, and this host's whole copy of it, if it has one."""
        cache = self.cache
        if is_file_id(target):
            local = cache.complete(bytes.fromhex(target))
            if local is not None:
                return local.manifest, local
            manifest = cache.known(target)  # in part here: its download resumes
            if manifest is not None:
                return manifest, None
        try:
            manifest = await cache.describe(target)
        except (TrackerUnavailable, TrackerRejected):
            held = None if is_file_id(target) else cache.find(target)
            if held is None:
                raise
            local = cache.complete(held)
            assert local is not None
            return local.manifest, local  # the tracker is away; the name's file here will do
        return manifest, cache.complete(manifest.raw_id)

    async def _send_local(
        self, request: web.Request, response: web.StreamResponse, local: SeededFile, span: Span, started: float
    ) -> web.StreamResponse:
        try:
            handle = local.open()
        except OSError as exc:
            return problem(500, "unreadable", f"cannot read {local.manifest.name}: {exc.strerror}")
        with handle:
            if not local.servable(handle):
                return problem(409, "changed", f"{local.manifest.name} changed on disk since it was verified")
            await response.prepare(request)
            self.metrics.first_byte.observe(time.perf_counter() - started)
            await self._send(request, handle, span.start, span.end - span.start)
        return response

    async def _stream(
        self, request: web.Request, response: web.StreamResponse, download: Download, manifest: Manifest,
        span: Span, started: float, finish: Callable[[], Awaitable[object]] | None = None,
    ) -> web.StreamResponse:
        """Bytes strictly in order, each run of verified chunks with sendfile as soon as it is;
        the response begins with the first run. `finish` is awaited before the file's last byte
        goes out (it raises P2PError to cut the response short: a blob whose digest is wrong)."""
        begin = self.beginning(request, response, started)
        try:
            await self.send_verified(request, download, manifest, span.start, span.end, begin, finish)
            await begin()  # an empty range of an empty file
        except P2PError as exc:
            if not begin.prepared:
                return _error_response(exc)
            # Never complete a response with missing bytes: cut it short.
            self.metrics.http_aborted.inc()
            log.warning("response cut short: the download failed", file=manifest.name, error=str(exc))
            if request.transport is not None:
                request.transport.abort()
        return response

    def beginning(self, request: web.Request, response: web.StreamResponse, started: float) -> Beginning:
        return Beginning(request, response, lambda: self.metrics.first_byte.observe(time.perf_counter() - started))

    async def send_verified(
        self, request: web.Request, download: Download, manifest: Manifest, start: int, end: int,
        begin: Callable[[], Awaitable[None]], finish: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Bytes [start, end) of a download's file to the client, in order, each run of verified
        chunks with sendfile as soon as it is (the chunks just ahead fetched first); `begin` is
        awaited before the first byte, `finish` (if given) before the file's last byte."""
        reader = object()
        size = manifest.chunk_size
        position = start
        handle: BinaryIO | None = None
        try:
            while position < end:
                index = position // size
                download.want(reader, index)
                await download.chunk(index)
                last = index
                while (last + 1) * size < end and (last + 1) in download.verified:
                    last += 1
                stop = min(end, (last + 1) * size)
                handle = handle or self._open_part(download, manifest)
                if finish is not None and stop == manifest.size:
                    if stop - 1 > position:  # all but the last byte now, the last once `finish` agrees
                        await begin()
                        await self._send(request, handle, position, stop - 1 - position)
                        position = stop - 1
                    await finish()
                await begin()
                await self._send(request, handle, position, stop - position)
                position = stop
        finally:
            download.want(reader, None)
            if handle is not None:
                handle.close()

    def _open_part(self, download: Download, manifest: Manifest) -> BinaryIO:
        """The file the download writes (its part file, followed across the rename at the end)."""
        source = self.cache.engine.sources.get(manifest.raw_id)
        if source is not None:
            return source.open()
        assert download.part_path is not None
        return open(download.part_path, "rb", buffering=0)

    async def _send(self, request: web.Request, handle: BinaryIO, offset: int, count: int) -> None:
        """File bytes to the client with sendfile, in blocks that must each go within the timeout
        (a client that stops reading is dropped). Each block is sized from the last one's pace to
        take about a second: a fast client gets few calls (64 MiB each at most), a slow one small
        blocks, so the timeout bounds a stall, not a slow but steady transfer."""
        loop = asyncio.get_running_loop()
        transport = request.transport
        block = MIN_BLOCK
        while count > 0:
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
            block = min(block, count)
            started = loop.time()
            try:
                await asyncio.wait_for(loop.sendfile(transport, handle, offset, block), self.settings.http_timeout)
            except TimeoutError:
                transport.abort()
                raise ConnectionResetError("the client stopped reading") from None
            self.metrics.http_bytes.inc(block)
            offset, count = offset + block, count - block
            pace = block / max(loop.time() - started, 1e-3)  # bytes a second
            block = int(min(MAX_BLOCK, max(MIN_BLOCK, pace)))

    async def fetch_file(self, request: web.Request) -> web.StreamResponse:
        """Into the cache without reading it: 202 once the download is under way."""
        try:
            manifest, local = await self._resolve(_target(request))
            body = {"file_id": manifest.file_id, "name": manifest.name, "size": manifest.size}
            if local is not None:
                return web.json_response({**body, "state": "cached"}, status=200)
            download = self.cache.fetch(manifest.file_id)
            await download.ready()
        except P2PError as exc:
            return _error_response(exc)
        return web.json_response({**body, "state": "fetching"}, status=202)

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({
            "capacity": self.cache.index.capacity, "used": self.cache.index.used, "files": self.cache.listing(),
            "seeded": [
                {"file_id": s.file_id, "name": s.manifest.name, "size": s.manifest.size, "path": str(s.path)}
                for s in self.cache.seeded.values()
            ],
        })

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        target = request.match_info["target"]
        if not is_file_id(target):
            return problem(400, "bad_target", "DELETE takes a file id (64 lowercase hex digits)")
        file_id = bytes.fromhex(target)
        entry = self.cache.index.get(file_id)
        if entry is not None and entry.readers:
            return problem(409, "in_use", f"{entry.name} is being read by {entry.readers} clients")
        if not await self.cache.delete(file_id):
            return problem(404, "not_cached", f"{target} is not in this cache")
        return web.Response(status=204)


def _route_of(request: web.Request) -> str:
    path, method = request.path, request.method
    if path == "/files":
        return "list"
    if path.startswith("/files/") and path.endswith("/fetch"):
        return "fetch"
    if path.startswith("/files/"):
        return "delete" if method == "DELETE" else "file"
    if path.startswith("/v2"):
        return "registry"
    return "other"


def _target(request: web.Request) -> str:
    """The file id or name a request names (BadTarget if it is neither)."""
    target = request.match_info["target"]
    if not is_file_id(target):
        try:
            check_file_name(target)
        except ValueError as exc:
            raise BadTarget(f"not a file id or a file name: {exc}") from None
    return target


def _error_response(exc: P2PError) -> web.Response:
    """An expected failure as its status: one line in the log, no traceback."""
    if isinstance(exc, BadTarget):
        status, code = 400, "bad_target"
    elif isinstance(exc, FileNotFound):
        status, code = 404, "not_found"
    elif isinstance(exc, CacheFull):
        status, code = 507, "cache_full"
    elif isinstance(exc, TrackerUnavailable | TrackerRejected):
        status, code = 503, "tracker_unavailable"
    elif isinstance(exc, NoHolder):
        status, code = 504, "no_holder"
    elif isinstance(exc, DownloadError):
        status, code = 502, "download_failed"
    else:
        status, code = 502, "failed"
    log.info("request failed", status=status, code=code, error=str(exc))
    return problem(status, code, str(exc))


def _read_token(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        token = path.read_bytes().strip()
    except OSError as exc:
        raise P2PError(f"cannot read the token file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise P2PError(f"the token in {path} is too short: 16 characters at least")
    return token

