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
from p2p_shared.hashing import digest_chunks
from p2p_shared.manifest import Manifest
from p2p_shared.net.cache import HostCache
from p2p_shared.net.download import Download

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
MAX_SIZES = 100_000  # blob sizes kept from manifests
MAX_PARTED = 1024  # large blobs whose parts this host follows
WINDOW = 2  # parts of one blob fetched from the upstream at once, across the swarm
PART_STREAMS = 4  # connections to the upstream for one part (ranges of it at once)
UPSTREAM_PARTS = 1  # parts one peer fetches from the upstream at once: the others' downlinks carry the rest
LOOKAHEAD = 8  # parts looked up in the swarm ahead of the first one nobody holds yet
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
    """A blob (or one part of it: `offset`, `length`) coming from the upstream into this host's
    cache as the swarm file `name`: readers follow `written`."""

    digest: str
    name: str
    path: Path
    offset: int = 0
    length: int | None = None  # a part's; None: the whole blob
    size: int | None = None
    written: int = 0
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    def grew(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()


@dataclass
class Part:
    """Where one part of a large blob comes from on this host: a whole file of the cache, a
    download through the swarm, or this host's own fetch from the upstream."""

    file: SeededFile | None = None
    download: Download | None = None
    manifest: Manifest | None = None
    fetch: Fetch | None = None

    def settled(self) -> bool:
        """Whole somewhere the swarm can take it from (or, for our own fetch, failed)."""
        return self.fetch is None or self.fetch.done.done()


class Parted:
    """A large blob as parts of `size` bytes, each a swarm file of its own named
    `sha256:<hex>.<k>`. Parts enter the swarm as their fetches from the upstream end, so the
    swarm spreads part k while the upstream sends the next: at most WINDOW parts of a blob are
    fetched from the upstream at once in the whole swarm (a peer claims a part only within
    WINDOW of the first part nobody holds yet), the rest come from peers. The whole digest is
    checked over the parts in order once all are here."""

    def __init__(self, digest: str, size: int, part_size: int) -> None:
        self.digest, self.size, self.part_size = digest, size, part_size
        self.count = -(-size // part_size)
        loop = asyncio.get_running_loop()
        self.parts: list[asyncio.Future] = [loop.create_future() for _ in range(self.count)]
        self.checked: asyncio.Future = loop.create_future()
        self.tasks: list[asyncio.Task] = []

    def name(self, k: int) -> str:
        return f"{self.digest}.{k}"

    def span(self, k: int) -> tuple[int, int]:
        start = k * self.part_size
        return start, min(self.size, start + self.part_size)

    def settled(self, k: int) -> bool:
        part = self.parts[k]
        return part.done() and (part.exception() is not None or part.result().settled())


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
        self.sizes: OrderedDict[str, int] = OrderedDict()  # blob digest -> size, from manifests
        self.parted: OrderedDict[str, Parted] = OrderedDict()  # large blobs, by digest
        self._claiming = 0  # claims of parts under way

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
        for layer, size in self._learn_sizes(body):
            if size > self.settings.registry_part_size and not self.settings.no_registry_prefetch:
                self._blob(upstream, repository, layer, size)  # the client asks for it next: start now
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

    def _learn_sizes(self, body: bytes) -> list[tuple[str, int]]:
        """An image manifest's blobs and their sizes (kept: a blob asked for next is fetched in
        parts without asking its size again); its layers, returned."""
        layers = []
        try:
            manifest = json.loads(body)
            descriptors = [manifest["config"], *manifest["layers"]] if "layers" in manifest else []
            for d in descriptors:
                if DIGEST.match(d["digest"]) and isinstance(d["size"], int) and d["size"] >= 0:
                    self.sizes[d["digest"]] = d["size"]
                    self.sizes.move_to_end(d["digest"])
                    layers.append((d["digest"], d["size"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return []
        while len(self.sizes) > MAX_SIZES:
            self.sizes.popitem(last=False)
        return layers[1:]

    async def _size(self, upstream: Upstream, repository: str, digest: str) -> int | None:
        """The blob's size: from a manifest this mirror served, else from the upstream (HEAD);
        None when neither says (the blob is then fetched whole)."""
        if digest in self.sizes:
            return self.sizes[digest]
        try:
            response = await self.client.request(upstream, "HEAD", repository, f"/v2/{repository}/blobs/{digest}")
        except UpstreamError:
            return None
        async with response:
            return response.content_length if response.status == 200 else None

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
        size = await self._size(upstream, repository, digest)
        if size is not None and size > self.settings.registry_part_size:
            return await self._parted(request, upstream, repository, digest, size, started)
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
                manifest = await self._in_swarm(digest)  # its last fetcher registers it before it gives the lease back
                if manifest is not None:
                    await self._release(digest)
                    return await self._from_swarm(request, manifest, digest, started)
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
        if not lease.mine:
            self.metrics.registry_elections.labels("waited").inc()
        return lease.mine  # won: counted when the fetch starts (unless the swarm has it by then)

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
        finally:
            self.checks.pop(manifest.raw_id, None)  # checked (a whole file of that name is the blob now) or gone

    # -- from the upstream -----------------------------------------------------------------------

    def _start_fetch(
        self, upstream: Upstream, repository: str, digest: str, leased: bool, name: str | None = None,
        offset: int = 0, length: int | None = None,
    ) -> Fetch:
        name = name or digest
        staged = self.cache.staging() / f"{name.split(':')[1]}.{os.getpid()}.{id(self)}"
        fetch = self.fetches[name] = Fetch(digest, name, staged, offset, length)
        if leased:
            self.metrics.registry_elections.labels("won").inc()
        fetch.task = asyncio.create_task(self._fetch(fetch, upstream, repository, leased))
        fetch.done.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # read: never "never retrieved"
        return fetch

    async def _fetch(self, fetch: Fetch, upstream: Upstream, repository: str, leased: bool) -> None:
        renew = asyncio.create_task(self._renew(fetch.name)) if leased else None
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
            self.fetches.pop(fetch.name, None)
            if renew is not None:
                renew.cancel()
                await self._release(fetch.name)

    async def _release(self, key: str) -> None:
        link = self.cache.engine.link
        if link is not None:
            with contextlib.suppress(P2PError):
                await link.claim(key, release=True)

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
        part = fetch.length is not None
        if part and fetch.length >= PART_STREAMS * chunk_size:
            return await self._fetch_part_in_streams(fetch, upstream, repository)
        headers = {"Range": f"bytes={fetch.offset}-{fetch.offset + fetch.length - 1}"} if part else None
        response = await self.client.request(upstream, "GET", repository, f"/v2/{repository}/blobs/{fetch.digest}", headers)
        async with response:
            if part and response.status == 200 and fetch.offset == 0 and response.content_length == fetch.length:
                pass  # the whole blob is this one part
            elif part and response.status != 206:
                _check_status(response.status, upstream, "blob", fetch.digest)
                raise UpstreamError(502, "UNAVAILABLE", f"upstream {upstream.name} answered a range of {fetch.digest} whole")
            else:
                _check_status(response.status if not part else 200, upstream, "blob", fetch.digest)
            fetch.size = response.content_length
            if part and fetch.size != fetch.length:
                raise UpstreamError(502, "UNAVAILABLE", f"upstream {upstream.name} sent {fetch.size} bytes for a part of {fetch.length}")
            if fetch.size is not None:
                self.cache.make_room(fetch.size, fetch.name)
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
        if not part and "sha256:" + hasher.whole.hexdigest() != fetch.digest:  # a part: checked with the others
            self.metrics.registry_mismatches.labels("upstream").inc()
            raise UpstreamError(502, "DIGEST_INVALID", f"upstream {upstream.name} sent bytes that are not {fetch.digest}")
        fetch.size = fetch.written
        manifest = Manifest(name=fetch.name, size=fetch.written, chunk_size=chunk_size, digests=hasher.chunk_digests())
        if not part:
            self.metrics.registry_blobs.labels("upstream").inc()
        return self.cache.adopt(fetch.path, manifest)

    async def _fetch_part_in_streams(self, fetch: Fetch, upstream: Upstream, repository: str) -> SeededFile:
        """A part from the upstream over PART_STREAMS connections at once, each a range of whole
        chunks written where it goes. At a peer whose downlink the swarm's flows share, flows
        share fairly: several flows from the upstream take the upstream's share, which is what
        the whole swarm waits for. Readers follow the stretch written from the start."""
        assert fetch.length is not None
        chunk_size, size = self.settings.chunk_size, fetch.length
        per = -(-size // PART_STREAMS // chunk_size) * chunk_size
        ranges = [(low, min(size, low + per)) for low in range(0, size, per)]
        done = [low for low, _ in ranges]  # where each stream writes next
        self.cache.make_room(size, fetch.name)
        fd = os.open(fetch.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            fetch.size = size
            fetch.grew()

            async def stream(i: int, low: int, high: int) -> None:
                first, last = fetch.offset + low, fetch.offset + high - 1
                response = await self.client.request(
                    upstream, "GET", repository, f"/v2/{repository}/blobs/{fetch.digest}", {"Range": f"bytes={first}-{last}"}
                )
                async with response:
                    if response.status != 206:
                        _check_status(response.status, upstream, "blob", fetch.digest)
                        raise UpstreamError(502, "UNAVAILABLE", f"upstream {upstream.name} answered a range of {fetch.digest} whole")
                    if response.content_length != high - low:
                        raise UpstreamError(502, "UNAVAILABLE", f"upstream {upstream.name} sent a range of {response.content_length} bytes for {high - low}")
                    async for block in response.content.iter_chunked(READ_BLOCK):
                        if done[i] + len(block) > high:
                            raise UpstreamError(502, "UNAVAILABLE", f"upstream {upstream.name} sent more than the range asked")
                        await asyncio.to_thread(os.pwrite, fd, block, done[i])
                        done[i] += len(block)
                        fetch.written = _written_from_start(ranges, done)
                        fetch.grew()
                if done[i] != high:
                    raise UpstreamError(502, "BLOB_UNKNOWN", f"upstream {upstream.name} sent {done[i] - low} bytes of a range of {high - low}")

            tasks = [asyncio.create_task(stream(i, low, high)) for i, (low, high) in enumerate(ranges)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
            await asyncio.to_thread(os.fsync, fd)
            digests = await asyncio.to_thread(digest_chunks, fd, size, chunk_size, range(-(-size // chunk_size)))
        finally:
            os.close(fd)
        self.metrics.registry_bytes.labels("upstream").inc(size)
        manifest = Manifest(name=fetch.name, size=size, chunk_size=chunk_size, digests=b"".join(digests))
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


    # -- large blobs, in parts (Parted) -----------------------------------------------------------

    async def _parted(
        self, request: web.Request, upstream: Upstream, repository: str, digest: str, size: int, started: float
    ) -> web.StreamResponse:
        response, span = self._response(request, digest, size)
        if response.status == 416 or request.method == "HEAD":
            return response
        blob = self._blob(upstream, repository, digest, size)
        if span.partial:  # a range: from the whole, checked blob
            try:
                await asyncio.shield(blob.checked)
            except P2PError as exc:
                raise _as_oci(exc, digest) from None
        begin = self.gateway.beginning(request, response, started)
        finish = lambda: asyncio.shield(blob.checked)  # noqa: E731
        position = span.start
        try:
            for k in range(span.start // blob.part_size, (span.end - 1) // blob.part_size + 1):
                part: Part = await asyncio.shield(blob.parts[k])
                low, high = blob.span(k)
                start, end = max(position, low) - low, min(span.end, high) - low
                last = finish if high == size and end == high - low else None
                await self._send_part(request, part, start, end, begin, last)
                position = low + end
            await begin()
        except P2PError as exc:
            if not begin.prepared:
                raise _as_oci(exc, digest) from None
            self.metrics.http_aborted.inc()
            log.warning("blob response cut short", digest=digest, sent=position - span.start, error=str(exc))
            if request.transport is not None:
                request.transport.abort()
        return response

    async def _send_part(self, request: web.Request, part: Part, start: int, end: int, begin, finish) -> None:
        """Bytes [start, end) of one part, in order, as they are verified or written."""
        if part.download is not None:
            assert part.manifest is not None
            with self.cache.reading(part.manifest.raw_id):
                await self.gateway.send_verified(request, part.download, part.manifest, start, end, begin, finish)
            return
        fetch = part.fetch
        if fetch is not None and fetch.done.done() and fetch.done.exception() is None:
            part = Part(file=fetch.done.result())
            fetch = None
        if part.file is not None:
            with part.file.open() as handle:
                if finish is not None and end - 1 > start:
                    await begin()
                    await self.gateway._send(request, handle, start, end - 1 - start)
                    start = end - 1
                if finish is not None:
                    await finish()
                await begin()
                await self.gateway._send(request, handle, start, end - start)
            return
        assert fetch is not None
        while fetch.size is None and not fetch.done.done():  # its file is made with the upstream's answer
            await fetch.changed.wait()
        if fetch.done.done():
            return await self._send_part(request, Part(fetch=fetch), start, end, begin, finish)
        with open(fetch.path, "rb", buffering=0) as handle:  # the part file as our fetch writes it
            position = start
            while position < end:
                changed = fetch.changed
                if fetch.done.done() and fetch.done.exception() is not None:
                    raise _as_oci(fetch.done.exception(), fetch.digest)
                ready = min(end, fetch.written if not fetch.done.done() else end)
                if finish is not None and ready == end:
                    if ready - 1 > position:
                        await begin()
                        await self.gateway._send(request, handle, position, ready - 1 - position)
                        position = ready - 1
                    if not fetch.done.done():
                        await changed.wait()
                        continue
                    await finish()
                if ready > position:
                    await begin()
                    await self.gateway._send(request, handle, position, ready - position)
                    position = ready
                else:
                    await changed.wait()

    def _blob(self, upstream: Upstream, repository: str, digest: str, size: int) -> Parted:
        """The parts of a large blob, found or fetched: one Parted per digest, shared by readers."""
        blob = self.parted.get(digest)
        if blob is not None and not (blob.checked.done() and blob.checked.exception() is not None):
            self.parted.move_to_end(digest)
            return blob
        blob = self.parted[digest] = Parted(digest, size, self.settings.registry_part_size)
        blob.checked.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        for future in blob.parts:
            future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        blob.tasks = [
            asyncio.create_task(self._acquire(blob, upstream, repository)),
            asyncio.create_task(self._check_parts(blob)),
        ]
        while len(self.parted) > MAX_PARTED:
            old = self.parted.popitem(last=False)[1]
            if old.checked.done():
                continue
            self.parted[old.digest] = old  # under way: kept
            self.parted.move_to_end(old.digest, last=False)
            break
        return blob

    async def _acquire(self, blob: Parted, upstream: Upstream, repository: str) -> None:
        """Find every part: here, in the swarm, or (within the window) by claiming its fetch."""
        deadline = time.monotonic() + self.settings.registry_wait
        try:
            while not all(p.done() for p in blob.parts):
                frontier = next((k for k in range(blob.count) if not blob.settled(k)), blob.count)
                progress = False
                for k in range(frontier, min(blob.count, frontier + LOOKAHEAD)):
                    if blob.parts[k].done():
                        continue
                    found = await self._find_part(blob, k, upstream, repository, claim=k < frontier + WINDOW)
                    if found is not None:
                        blob.parts[k].set_result(found)
                        progress = True
                if time.monotonic() > deadline:
                    raise OciError(504, "UNAVAILABLE", f"{blob.digest}: its parts did not all come in {self.settings.registry_wait:g}s")
                if not progress:
                    waits = [p.result().fetch.done for p in blob.parts if p.done() and p.result().fetch is not None
                             and not p.result().fetch.done.done()]
                    if waits:  # our own fetches: the window moves when one ends
                        await asyncio.wait(waits, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)  # wait cancels nothing
                    else:
                        await asyncio.sleep(POLL)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else DownloadError("stopped")
            for part in blob.parts:
                if not part.done():
                    part.set_exception(error)
            if not isinstance(exc, Exception):
                raise

    def _upstream_parts(self) -> int:
        return sum(1 for f in self.fetches.values() if f.length is not None and not f.done.done())

    async def _find_part(self, blob: Parted, k: int, upstream: Upstream, repository: str, claim: bool) -> Part | None:
        name = blob.name(k)
        file_id = self.cache.find(name)
        if file_id is not None and file_id not in self.bad:
            local = self.cache.complete(file_id)
            if local is not None:
                return Part(file=local)
        fetch = self.fetches.get(name)
        if fetch is not None:
            return Part(fetch=fetch)
        manifest = await self._in_swarm(name)
        if manifest is not None:
            download = self.cache.fetch(manifest.file_id)
            try:
                await download.ready()
            except P2PError:
                return None
            return Part(download=download, manifest=manifest)
        if not claim or self._upstream_parts() + self._claiming >= UPSTREAM_PARTS:
            return None
        self._claiming += 1  # a slot held while the claim is out: the cap is not passed by claims at once
        try:
            if not await self._claim(name):
                return None
            # Its last fetcher registers it before it gives the lease back: look once more.
            manifest = await self._in_swarm(name)
            if manifest is not None:
                await self._release(name)
                return None  # taken from the swarm on the next round
            low, high = blob.span(k)
            return Part(fetch=self._start_fetch(upstream, repository, blob.digest, True, name, low, high - low))
        finally:
            self._claiming -= 1

    async def _check_parts(self, blob: Parted) -> None:
        """The parts, in order, hash to the blob's digest; else every part goes (and the swarm
        files among them are not taken again)."""
        whole = hashlib.sha256()
        parts: list[Part] = []
        try:
            for future in blob.parts:
                part: Part = await asyncio.shield(future)
                parts.append(part)
                path = await self._whole_part(part)
                await asyncio.to_thread(_hash_into, whole, path)
            if "sha256:" + whole.hexdigest() != blob.digest:
                swarm = [p.manifest.raw_id for p in parts if p.manifest is not None]
                self.bad.update(swarm)
                source = "swarm" if swarm else "upstream"
                self.metrics.registry_mismatches.labels(source).inc()
                log.warning("a large blob's parts do not make its digest: dropped", digest=blob.digest, source=source)
                for p in parts:
                    raw = p.manifest.raw_id if p.manifest is not None else (p.file or p.fetch.done.result()).raw_id
                    self.cache.forget(raw)
                raise DigestMismatch(f"the parts of {blob.digest} ({source}) do not match it")
            sources = {"swarm" if p.download is not None else "upstream" if p.fetch is not None else "cache" for p in parts}
            self.metrics.registry_blobs.labels("upstream" if "upstream" in sources else "swarm" if "swarm" in sources else "cache").inc()
            blob.checked.set_result(None)
        except BaseException as exc:
            blob.checked.set_exception(exc if isinstance(exc, Exception) else DownloadError("stopped"))
            self.parted.pop(blob.digest, None)
            if not isinstance(exc, Exception):
                raise

    async def _whole_part(self, part: Part) -> Path:
        if part.file is not None:
            return part.file.path
        if part.fetch is not None:
            return (await asyncio.shield(part.fetch.done)).path
        assert part.download is not None and part.download.task is not None and part.manifest is not None
        await asyncio.shield(part.download.task)
        local = self.cache.complete(part.manifest.raw_id)
        if local is None:
            raise DownloadError(f"{part.manifest.name} left the cache before it was checked")
        return local.path


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


def _written_from_start(ranges: list[tuple[int, int]], done: list[int]) -> int:
    """The bytes written without a gap from the start, ranges being written in parallel."""
    for (low, high), at in zip(ranges, done):
        if at < high:
            return at
    return ranges[-1][1] if ranges else 0


def _hash_into(hasher, path: Path) -> None:
    with open(path, "rb") as handle:
        while block := handle.read(READ_BLOCK):
            hasher.update(block)


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
