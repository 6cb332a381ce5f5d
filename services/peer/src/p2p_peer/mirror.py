"""The registry mirror: the pull side of the OCI distribution API on the gateway's port, so that
containerd, Docker and skopeo pull images through the swarm.

Manifests come from the upstream (by tag every time, as tags move; a tag's last answer is kept
and used only when the upstream does not answer); by digest they are kept in memory and checked
against their digest. Blobs are files of the swarm named by their digest (`sha256:<hex>`):
- here already (a whole file of that name whose digest was checked): sent with sendfile;
- held by peers: fetched through the swarm (streamed as chunks are verified);
- held by nobody: one peer fetches it from the upstream. It takes the tracker's lease named by
  the digest (protocol version 5), fetches the blob while it streams it to its own client,
  checks the digest, then puts the blob in its cache, where it is registered and served like
  any file. The other peers, whose claims found the lease taken, look the blob up until it is
  there, then fetch it through the swarm; a holder that dies loses the lease when it runs out,
  and the next claim takes the fetch over. Without a tracker, each peer fetches for itself.

The digest is the identity: no response is completed with bytes that do not hash to it. A swarm
file under a blob's name is hashed once it is whole; a mismatch (a hostile registrant) cuts the
responses short, drops the file, is counted, and later requests for that digest skip the swarm
file and go upstream. An upstream blob that does not match its digest is refused the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog
from aiohttp import web

from p2p_shared.catalog import SeededFile
from p2p_shared.errors import (
    CacheFull,
    DownloadError,
    FileNotFound,
    NoHolder,
    P2PError,
    TrackerRejected,
    TrackerUnavailable,
    Unsatisfiable,
)
from p2p_shared.manifest import Manifest
from p2p_shared.net.cache import HostCache

from .gateway import Gateway, byte_span
from .metrics import PeerMetrics
from .upstream import DOCKER_HUB, Upstream, UpstreamClient, UpstreamError

log = structlog.get_logger()

DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
# The distribution spec's repository name.
REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MAX_MANIFEST = 4 << 20  # bytes: the spec's suggested limit
MANIFEST_MEMORY = 64 << 20  # bytes of manifests kept by digest
MAX_TAGS = 10_000  # tags whose last answer is kept
READ_BLOCK = 1 << 20
POLL = 0.25  # seconds between lookups while another peer fetches a blob


class OciError(P2PError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class DigestMismatch(DownloadError):
    """Bytes that do not hash to the digest they were asked for."""


def oci_error(status: int, code: str, message: str) -> web.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return web.json_response(body, status=status, headers={"Docker-Distribution-API-Version": "registry/2.0"})


@dataclass
class Fetch:
    """A blob coming from the upstream into this host's cache: readers follow `written`."""

    digest: str
    path: Path
    size: int | None = None
    written: int = 0
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    def grew(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()


class Mirror:
    def __init__(self, settings, cache: HostCache, metrics: PeerMetrics, upstreams: dict[str, Upstream], gateway: Gateway) -> None:
        self.settings = settings
        self.cache = cache
        self.metrics = metrics
        self.upstreams = upstreams
        self.gateway = gateway
        self.client = UpstreamClient(settings.registry_connect_timeout)
        self.manifests: OrderedDict[str, tuple[str, bytes]] = OrderedDict()  # digest -> media type, body
        self._manifest_bytes = 0
        self.tags: OrderedDict[tuple[str, str, str], str] = OrderedDict()  # (upstream, repository, tag) -> digest
        self.fetches: dict[str, Fetch] = {}  # from the upstream, under way here
        self.checks: dict[bytes, asyncio.Future] = {}  # swarm file id -> its digest check
        self.bad: set[bytes] = set()  # swarm files registered under a digest they do not match

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2/", self.base, allow_head=True),
            web.route("*", "/v2/{path:.+}", self.dispatch),
        ]

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        for fetch in list(self.fetches.values()):
            if fetch.task is not None:
                fetch.task.cancel()
        await self.client.close()

    # -- routing ---------------------------------------------------------------------------------

    async def base(self, request: web.Request) -> web.StreamResponse:
        self.metrics.registry_requests.labels("base", "200").inc()
        return web.json_response({}, headers={"Docker-Distribution-API-Version": "registry/2.0"})

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        repository, kind, reference = _split(path)
        count = self.metrics.registry_requests
        if request.method not in ("GET", "HEAD"):
            count.labels(kind or "other", "405").inc()
            return oci_error(405, "UNSUPPORTED", "this mirror only pulls: push to the upstream registry")
        if kind is None:
            count.labels("other", "404").inc()
            return oci_error(404, "NAME_UNKNOWN", f"no such registry path: /v2/{path}")
        try:
            upstream = self._upstream(request)
            if not REPOSITORY.match(repository) or len(repository) > 255:
                raise OciError(400, "NAME_INVALID", f"not a repository name: {repository!r}")
            if kind == "manifest":
                response = await self.manifest(request, upstream, repository, reference)
            else:
                match = DIGEST.match(reference)
                if match is None:
                    raise OciError(400, "DIGEST_INVALID", f"not a sha256 digest: {reference!r}")
                response = await self.blob(request, upstream, repository, reference)
        except (OciError, UpstreamError) as exc:
            log.info("registry request failed", kind=kind, status=exc.status, code=exc.code, error=str(exc))
            response = oci_error(exc.status, exc.code, str(exc))
        except CacheFull as exc:
            response = oci_error(507, "CACHE_FULL", str(exc))
        except P2PError as exc:
            log.info("registry request failed", kind=kind, error=str(exc))
            response = oci_error(502, "UNAVAILABLE", str(exc))
        count.labels(kind, str(response.status)).inc()
        return response

    def _upstream(self, request: web.Request) -> Upstream:
        """The registry a request is for: containerd names it (`?ns=`); without it Docker Hub, or
        the only one configured."""
        ns = request.query.get("ns")
        if ns is None:
            if DOCKER_HUB in self.upstreams:
                return self.upstreams[DOCKER_HUB]
            if len(self.upstreams) == 1:
                return next(iter(self.upstreams.values()))
            raise OciError(404, "NAME_UNKNOWN", "which registry? add ?ns=NAME (containerd does), or configure docker.io")
        upstream = self.upstreams.get(ns)
        if upstream is None:
            raise OciError(404, "NAME_UNKNOWN", f"this mirror has no upstream for {ns} (--registry {ns}=URL)")
        return upstream

    # -- manifests -------------------------------------------------------------------------------

    async def manifest(self, request: web.Request, upstream: Upstream, repository: str, reference: str) -> web.StreamResponse:
        by_digest = DIGEST.match(reference) is not None
        if not by_digest and not TAG.match(reference):
            raise OciError(400, "MANIFEST_INVALID", f"not a tag or a digest: {reference!r}")
        key = (upstream.name, repository, reference)
        if by_digest and reference in self.manifests:
            self.manifests.move_to_end(reference)
            media_type, body = self.manifests[reference]
            return _manifest_response(request, reference, media_type, body)
        try:
            digest, media_type, body = await self._manifest_upstream(request, upstream, repository, reference)
        except UpstreamError as exc:
            known = self.tags.get(key) if not by_digest else None
            if exc.status < 500 or known is None or known not in self.manifests:
                raise
            log.warning("upstream unavailable: answering a tag with its last manifest", tag=reference, repository=repository)
            media_type, body = self.manifests[known]
            return _manifest_response(request, known, media_type, body)
        self._keep_manifest(digest, media_type, body)
        if not by_digest:
            self.tags[key] = digest
            self.tags.move_to_end(key)
            while len(self.tags) > MAX_TAGS:
                self.tags.popitem(last=False)
        return _manifest_response(request, digest, media_type, body)

    async def _manifest_upstream(
        self, request: web.Request, upstream: Upstream, repository: str, reference: str
    ) -> tuple[str, str, bytes]:
        accept = ", ".join(request.headers.getall("Accept", [])) or ", ".join(MANIFEST_TYPES)
        response = await self.client.request(
            upstream, "GET", repository, f"/v2/{repository}/manifests/{reference}", {"Accept": accept}
        )
        async with response:
            _check_status(response.status, upstream, "manifest", reference)
            if (response.content_length or 0) > MAX_MANIFEST:
                raise UpstreamError(502, "MANIFEST_INVALID", f"upstream {upstream.name} sent a manifest over {MAX_MANIFEST} bytes")
            body = await response.content.read(MAX_MANIFEST + 1)
            if len(body) > MAX_MANIFEST:
                raise UpstreamError(502, "MANIFEST_INVALID", f"upstream {upstream.name} sent a manifest over {MAX_MANIFEST} bytes")
            header_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if DIGEST.match(reference) and digest != reference:
            self.metrics.registry_mismatches.labels("upstream").inc()
            raise UpstreamError(502, "DIGEST_INVALID", f"upstream {upstream.name} sent a manifest that is not {reference}")
        try:
            declared = json.loads(body).get("mediaType")
        except (ValueError, AttributeError):
            declared = None
        media_type = declared if declared in MANIFEST_TYPES else header_type or MANIFEST_TYPES[0]
        return digest, media_type, body

    def _keep_manifest(self, digest: str, media_type: str, body: bytes) -> None:
        if digest in self.manifests:
            self.manifests.move_to_end(digest)
            return
        self.manifests[digest] = (media_type, body)
        self._manifest_bytes += len(body)
        while self._manifest_bytes > MANIFEST_MEMORY:
            _, (_, old) = self.manifests.popitem(last=False)
            self._manifest_bytes -= len(old)

    # -- blobs -----------------------------------------------------------------------------------

    async def blob(self, request: web.Request, upstream: Upstream, repository: str, digest: str) -> web.StreamResponse:
        started = time.perf_counter()
        local = await self._local(digest)
        if local is not None:
            return await self._send_local(request, local, digest, started)
        deadline = time.monotonic() + self.settings.registry_wait
        while True:
            fetch = self.fetches.get(digest)
            if fetch is not None:
                return await self._from_fetch(request, fetch, started)
            manifest = await self._in_swarm(digest)
            if manifest is not None:
                return await self._from_swarm(request, manifest, digest, started)
            if request.method == "HEAD":
                return await self._head_upstream(upstream, repository, digest)
            if await self._claim(digest):
                fetch = self._start_fetch(upstream, repository, digest, leased=True)
                return await self._from_fetch(request, fetch, started)
            if time.monotonic() > deadline:
                raise OciError(504, "UNAVAILABLE", f"{digest}: another peer's fetch from the upstream did not finish in {self.settings.registry_wait:g}s")
            await asyncio.sleep(POLL)

    async def _local(self, digest: str) -> SeededFile | None:
        """The blob, whole in this cache and checked (a swarm file is hashed once it is whole:
        that check is awaited here)."""
        file_id = self.cache.find(digest)
        if file_id is None or file_id in self.bad:
            return None
        check = self.checks.get(file_id)
        if check is not None:
            with contextlib.suppress(P2PError):
                await asyncio.shield(check)
        return None if file_id in self.bad else self.cache.complete(file_id)

    async def _in_swarm(self, digest: str) -> Manifest | None:
        """The swarm file under the digest's name, if some peer holds one not known to be bad."""
        try:
            manifest = await self.cache.describe(digest)
        except (FileNotFound, NoHolder):
            return None
        except (TrackerUnavailable, TrackerRejected) as exc:
            log.warning("tracker unavailable: the blob comes from the upstream", digest=digest, error=str(exc))
            return None
        return None if manifest.raw_id in self.bad else manifest

    async def _claim(self, digest: str) -> bool:
        """Whether this host fetches the blob from the upstream: it holds the lease, or there is
        no tracker to ask (each host for itself then)."""
        link = self.cache.engine.link
        if link is None:
            return True
        try:
            lease = await link.claim(digest)
        except (TrackerUnavailable, TrackerRejected) as exc:
            log.warning("tracker did not answer a claim: fetching from the upstream", digest=digest, error=str(exc))
            return True
        self.metrics.registry_elections.labels("won" if lease.mine else "waited").inc()
        return lease.mine

    async def _head_upstream(self, upstream: Upstream, repository: str, digest: str) -> web.StreamResponse:
        response = await self.client.request(upstream, "HEAD", repository, f"/v2/{repository}/blobs/{digest}")
        async with response:
            _check_status(response.status, upstream, "blob", digest)
            size = response.content_length
        answer = web.StreamResponse(status=200, headers=_blob_headers(digest))
        if size is not None:
            answer.content_length = size
        return answer

    # -- from the cache --------------------------------------------------------------------------

    async def _send_local(self, request: web.Request, local: SeededFile, digest: str, started: float) -> web.StreamResponse:
        response, span = self._response(request, digest, local.manifest.size)
        if response.status == 416 or request.method == "HEAD":
            return response
        with self.cache.reading(local.raw_id):
            self.metrics.registry_blobs.labels("cache").inc()
            await self.gateway._send_local(request, response, local, span, started)
            self.metrics.registry_bytes.labels("cache").inc(span.end - span.start)
        return response

    def _response(self, request: web.Request, digest: str, size: int):
        headers = _blob_headers(digest)
        try:
            span = byte_span(request.headers.get("Range"), size)
        except Unsatisfiable:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"}), None
        if span.partial:
            headers["Content-Range"] = f"bytes {span.start}-{span.end - 1}/{size}"
        response = web.StreamResponse(status=206 if span.partial else 200, headers=headers)
        response.content_length = span.end - span.start
        return response, span

    # -- through the swarm -----------------------------------------------------------------------

    async def _from_swarm(self, request: web.Request, manifest: Manifest, digest: str, started: float) -> web.StreamResponse:
        response, span = self._response(request, digest, manifest.size)
        if response.status == 416:
            return response
        if request.method == "HEAD":
            await response.prepare(request)
            return response
        download = self.cache.fetch(manifest.file_id)
        try:
            await download.ready()
        except P2PError as exc:
            raise OciError(502, "UNAVAILABLE", f"{digest}: {exc}") from None
        check = self.checks.get(manifest.raw_id)
        if check is None:
            check = self.checks[manifest.raw_id] = asyncio.ensure_future(self._check_swarm_file(download, manifest, digest))
        self.metrics.registry_blobs.labels("swarm").inc()
        if span.partial:  # a range is answered from a whole, checked blob only
            await asyncio.shield(check)
        with self.cache.reading(manifest.raw_id):
            await self.gateway._stream(request, response, download, manifest, span, started, finish=lambda: asyncio.shield(check))
        self.metrics.registry_bytes.labels("swarm").inc(span.end - span.start)
        return response

    async def _check_swarm_file(self, download, manifest: Manifest, digest: str) -> None:
        """Once the swarm file is whole: its bytes hash to the digest, or it goes (DigestMismatch)."""
        try:
            assert download.task is not None
            await asyncio.shield(download.task)
            local = self.cache.complete(manifest.raw_id)
            if local is None:
                raise DownloadError(f"{digest}: the swarm file left the cache before it was checked")
            actual = await asyncio.to_thread(_sha256_file, local.path)
            if "sha256:" + actual != digest:
                self.bad.add(manifest.raw_id)
                self.metrics.registry_mismatches.labels("swarm").inc()
                log.warning("a swarm file under a blob's name is not that blob: dropped", digest=digest, file_id=manifest.file_id)
                self.cache.forget(manifest.raw_id)
                raise DigestMismatch(f"the swarm's file for {digest} does not match it")
        except BaseException:
            self.checks.pop(manifest.raw_id, None)
            raise

    # -- from the upstream -----------------------------------------------------------------------

    def _start_fetch(self, upstream: Upstream, repository: str, digest: str, leased: bool) -> Fetch:
        staged = self.cache.staging() / f"{digest.split(':')[1]}.{os.getpid()}.{id(self)}"
        fetch = self.fetches[digest] = Fetch(digest, staged)
        fetch.task = asyncio.create_task(self._fetch(fetch, upstream, repository, leased))
        fetch.done.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # read: never "never retrieved"
        return fetch

    async def _fetch(self, fetch: Fetch, upstream: Upstream, repository: str, leased: bool) -> None:
        renew = asyncio.create_task(self._renew(fetch.digest)) if leased else None
        try:
            seeded = await self._fetch_into_cache(fetch, upstream, repository)
        except BaseException as exc:
            fetch.path.unlink(missing_ok=True)
            if not fetch.done.done():
                fetch.done.set_exception(exc if isinstance(exc, Exception) else DownloadError("fetch stopped"))
            fetch.grew()
            if not isinstance(exc, Exception):
                raise
        else:
            fetch.done.set_result(seeded)
            fetch.grew()
            if self.cache.engine.link is not None:
                await self.cache.engine.link.settled(5.0)  # the tracker knows we hold it: waiters find it
        finally:
            self.fetches.pop(fetch.digest, None)
            if renew is not None:
                renew.cancel()
                link = self.cache.engine.link
                if link is not None:
                    with contextlib.suppress(P2PError):
                        await link.claim(fetch.digest, release=True)

    async def _renew(self, digest: str) -> None:
        link = self.cache.engine.link
        assert link is not None
        every = 3.0
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(P2PError):
                lease = await link.claim(digest)
                every = max(0.5, lease.ttl / 3)

    async def _fetch_into_cache(self, fetch: Fetch, upstream: Upstream, repository: str) -> SeededFile:
        chunk_size = self.settings.chunk_size
        response = await self.client.request(upstream, "GET", repository, f"/v2/{repository}/blobs/{fetch.digest}")
        async with response:
            _check_status(response.status, upstream, "blob", fetch.digest)
            fetch.size = response.content_length
            if fetch.size is not None:
                self.cache.make_room(fetch.size, fetch.digest)
            hasher = Hashing(chunk_size)
            with open(fetch.path, "wb", buffering=0) as out:
                fetch.grew()  # readers learn the size
                async for block in response.content.iter_chunked(READ_BLOCK):
                    await asyncio.to_thread(hasher.write, out, block)
                    fetch.written += len(block)
                    if fetch.size is not None and fetch.written > fetch.size:
                        break
                    fetch.grew()
                await asyncio.to_thread(os.fsync, out.fileno())
        self.metrics.registry_bytes.labels("upstream").inc(fetch.written)
        if fetch.size is not None and fetch.written != fetch.size:
            raise UpstreamError(502, "BLOB_UNKNOWN", f"upstream {upstream.name} sent {fetch.written} bytes of {fetch.size} for {fetch.digest}")
        if "sha256:" + hasher.whole.hexdigest() != fetch.digest:
            self.metrics.registry_mismatches.labels("upstream").inc()
            raise UpstreamError(502, "DIGEST_INVALID", f"upstream {upstream.name} sent bytes that are not {fetch.digest}")
        fetch.size = fetch.written
        manifest = Manifest(name=fetch.digest, size=fetch.written, chunk_size=chunk_size, digests=hasher.chunk_digests())
        self.metrics.registry_blobs.labels("upstream").inc()
        return self.cache.adopt(fetch.path, manifest)

    async def _from_fetch(self, request: web.Request, fetch: Fetch, started: float) -> web.StreamResponse:
        """Follow a fetch from the upstream: bytes as they are written, the last one only once
        the digest is checked."""
        while fetch.size is None and not fetch.done.done():
            await fetch.changed.wait()
        if fetch.done.done() and fetch.done.exception() is not None:
            raise _as_oci(fetch.done.exception(), fetch.digest)
        size = fetch.size if fetch.size is not None else fetch.written
        response, span = self._response(request, fetch.digest, size)
        if response.status == 416 or request.method == "HEAD":
            return response
        if span.partial:  # a range: from the whole, checked blob
            await asyncio.shield(fetch.done)
        if fetch.done.done():  # whole and checked: in the cache now, not in the staging folder
            return await self._send_local(request, fetch.done.result(), fetch.digest, started)
        await response.prepare(request)
        self.metrics.first_byte.observe(time.perf_counter() - started)
        position = 0
        handle: BinaryIO | None = None
        try:
            handle = open(fetch.path, "rb", buffering=0)
            while position < size:
                changed = fetch.changed
                ready = fetch.written if not fetch.done.done() else size
                if fetch.done.done() and fetch.done.exception() is not None:
                    raise _as_oci(fetch.done.exception(), fetch.digest)
                if not fetch.done.done():
                    ready = min(ready, size - 1)  # the last byte waits for the digest
                if ready > position:
                    await self.gateway._send(request, handle, position, ready - position)
                    position = ready
                else:
                    await changed.wait()
        except (OciError, UpstreamError, DownloadError) as exc:
            self.metrics.http_aborted.inc()
            log.warning("blob response cut short", digest=fetch.digest, sent=position, error=str(exc))
            if request.transport is not None:
                request.transport.abort()
        finally:
            if handle is not None:
                handle.close()
        return response


class Hashing:
    """The blob's digest and its chunks' digests, as its bytes are written (in a worker thread)."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._in_chunk = 0
        self._digests: list[bytes] = []

    def write(self, out: BinaryIO, block: bytes) -> None:
        out.write(block)
        self.whole.update(block)
        view = memoryview(block)
        while view:
            take = min(len(view), self.chunk_size - self._in_chunk)
            self._chunk.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == self.chunk_size:
                self._digests.append(self._chunk.digest())
                self._chunk, self._in_chunk = hashlib.sha256(), 0

    def chunk_digests(self) -> bytes:
        tail = [self._chunk.digest()] if self._in_chunk else []
        return b"".join(self._digests + tail)


def _split(path: str) -> tuple[str, str | None, str]:
    """`<name>/manifests/<reference>` or `<name>/blobs/<digest>` (or an upload under it, which
    only a push asks for): (name, kind, reference)."""
    for marker, kind in (("/manifests/", "manifest"), ("/blobs/", "blob")):
        name, found, reference = path.rpartition(marker)
        if found and name and reference and "/" not in reference:
            return name, kind, reference
    return path, None, ""


def _check_status(status: int, upstream: Upstream, what: str, reference: str) -> None:
    if status == 200:
        return
    if status == 404:
        code = "MANIFEST_UNKNOWN" if what == "manifest" else "BLOB_UNKNOWN"
        raise UpstreamError(404, code, f"upstream {upstream.name} has no {what} {reference}")
    if status in (401, 403):
        raise UpstreamError(403, "DENIED", f"upstream {upstream.name} refused the {what} {reference} ({status})")
    if status == 429:
        raise UpstreamError(429, "TOOMANYREQUESTS", f"upstream {upstream.name} asks us to slow down")
    raise UpstreamError(502, "UNAVAILABLE", f"upstream {upstream.name} answered {status} for the {what} {reference}")


def _as_oci(exc: BaseException | None, digest: str) -> P2PError:
    if isinstance(exc, OciError | UpstreamError):
        return exc
    if isinstance(exc, CacheFull):
        return OciError(507, "CACHE_FULL", str(exc))
    return OciError(502, "UNAVAILABLE", f"{digest}: {exc}")


def _blob_headers(digest: str) -> dict[str, str]:
    return {
        "Docker-Content-Digest": digest, "ETag": f'"{digest}"', "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream", "Docker-Distribution-API-Version": "registry/2.0",
    }


def _manifest_response(request: web.Request, digest: str, media_type: str, body: bytes) -> web.Response:
    headers = {
        "Docker-Content-Digest": digest, "ETag": f'"{digest}"', "Content-Type": media_type,
        "Docker-Distribution-API-Version": "registry/2.0",
    }
    return web.Response(status=200, body=body, headers=headers)  # aiohttp leaves a HEAD's body out


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
