"""OCI images for the registry mirror's tests and benchmark: small images built here (random
layers, an index with two platforms), pushed to a registry with the distribution API."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.request
from dataclasses import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """An image as pushed: its tag, its index (two platforms), and every blob by digest."""

    repository: str
    tag: str
    index: bytes
    manifests: dict[str, bytes] = field(default_factory=dict)  # digest -> manifest
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> config or layer

    @property
    def index_digest(self) -> str:
        return digest_of(self.index)

    def layers(self) -> list[str]:
        return [d for d in self.blobs if self.blobs[d][:2] == b"\x1f\x8b"]


def layer(rng, size: int, name: str) -> tuple[bytes, bytes]:
    """A gzip'd tar of one file of `size` random bytes: (the blob, the uncompressed tar)."""
    payload = rng.randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), tar_bytes


def build_image(rng, repository: str, tag: str, layer_sizes: list[int]) -> Image:
    """Layers shared by two platforms (amd64, arm64), each with its own config and manifest."""
    blobs: dict[str, bytes] = {}
    descriptors, diff_ids = [], []
    for n, size in enumerate(layer_sizes):
        blob, tar_bytes = layer(rng, size, f"layer-{n}.bin")
        blobs[digest_of(blob)] = blob
        descriptors.append({"mediaType": OCI_LAYER, "digest": digest_of(blob), "size": len(blob)})
        diff_ids.append(digest_of(tar_bytes))
    image = Image(repository, tag, b"", blobs=blobs)
    entries = []
    for arch in ("amd64", "arm64"):
        config = json.dumps({
            "architecture": arch, "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }).encode()
        blobs[digest_of(config)] = config
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": descriptors,
        }).encode()
        image.manifests[digest_of(manifest)] = manifest
        entries.append({
            "mediaType": OCI_MANIFEST, "digest": digest_of(manifest), "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
        })
    image.index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return image



def push(url: str, image: Image, auth: str | None = None) -> None:
    """Blobs, manifests by digest, then the index under its tag (the distribution API)."""
    headers = {"Authorization": auth} if auth else {}
    for digest, blob in image.blobs.items():
        start = urllib.request.Request(f"{url}/v2/{image.repository}/blobs/uploads/", method="POST", headers=headers)
        with urllib.request.urlopen(start) as answer:
            location = answer.headers["Location"]
        if location.startswith("/"):
            location = url + location
        sep = "&" if "?" in location else "?"
        put = urllib.request.Request(f"{location}{sep}digest={digest}", data=blob, method="PUT", headers={
            **headers, "Content-Type": "application/octet-stream"})
        urllib.request.urlopen(put).close()
    for digest, manifest in image.manifests.items():
        _put_manifest(url, image.repository, digest, manifest, OCI_MANIFEST, headers)
    _put_manifest(url, image.repository, image.tag, image.index, OCI_INDEX, headers)


def _put_manifest(url: str, repository: str, reference: str, body: bytes, media_type: str, headers: dict) -> None:
    put = urllib.request.Request(f"{url}/v2/{repository}/manifests/{reference}", data=body, method="PUT",
                                 headers={**headers, "Content-Type": media_type})
    urllib.request.urlopen(put).close()
