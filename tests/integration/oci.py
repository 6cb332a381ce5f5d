"""Real registries and real clients for the mirror's tests: Debian's CNCF distribution registry
(`docker-registry`) as the upstream, on a free port; small images built here (random layers,
an index with two platforms) and pushed with the distribution API; a private containerd."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.host_tools import host_tool
from tools.localswarm import free_port

from .conftest import wait_until

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


class Registry:
    """A real distribution registry on 127.0.0.1, its access log kept to count what it sent."""

    def __init__(self, workdir: Path, htpasswd: Path | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.log = workdir / "registry.log"
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "test-secret"},
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
        self.config = workdir / "registry.yml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Registry:
        program = host_tool("docker-registry", "docker-registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([program, "serve", str(self.config)], stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: self._answers() or self.proc.poll() is not None, timeout=30)
        if self.proc.poll() is not None:
            raise AssertionError(f"docker-registry exited:\n{self.log.read_text()}")
        return self

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/v2/", timeout=1)
            return True
        except urllib.error.HTTPError:
            return True  # 401 with auth: it answers
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def push(self, image: Image, auth: str | None = None) -> None:
        """Blobs, manifests by digest, then the index under its tag (the distribution API)."""
        headers = {"Authorization": auth} if auth else {}
        for digest, blob in image.blobs.items():
            start = urllib.request.Request(f"{self.url}/v2/{image.repository}/blobs/uploads/", method="POST", headers=headers)
            with urllib.request.urlopen(start) as answer:
                location = answer.headers["Location"]
            if location.startswith("/"):
                location = self.url + location
            sep = "&" if "?" in location else "?"
            put = urllib.request.Request(f"{location}{sep}digest={digest}", data=blob, method="PUT", headers={
                **headers, "Content-Type": "application/octet-stream"})
            urllib.request.urlopen(put).close()
        for digest, manifest in image.manifests.items():
            self._put_manifest(image.repository, digest, manifest, OCI_MANIFEST, headers)
        self._put_manifest(image.repository, image.tag, image.index, OCI_INDEX, headers)

    def _put_manifest(self, repository: str, reference: str, body: bytes, media_type: str, headers: dict) -> None:
        put = urllib.request.Request(f"{self.url}/v2/{repository}/manifests/{reference}", data=body, method="PUT",
                                     headers={**headers, "Content-Type": media_type})
        urllib.request.urlopen(put).close()

    def blob_gets(self) -> dict[str, int]:
        """Blob GETs the registry answered with bytes (200 or 206), by digest, from its access log."""
        counts: dict[str, int] = {}
        for match in re.finditer(r'"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64})[^"]*" (20[06])', self.log.read_text()):
            counts[match[1]] = counts.get(match[1], 0) + 1
        return counts


class Containerd:
    """A private containerd (its own root, state and socket), for `ctr` pulls."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "containerd.sock"
        self.config = workdir / "config.toml"
        self.log = workdir / "containerd.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Containerd:
        program = host_tool("containerd", "containerd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.workdir / "root"}"\n'
            f'state = "{self.workdir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
            "[ttrpc]\n"
            f'  address = "{self.socket}.ttrpc"\n'
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([program, "--config", str(self.config)], stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: self.socket.exists() or self.proc.poll() is not None, timeout=30)
        if self.proc.poll() is not None:
            raise AssertionError(f"containerd exited:\n{self.log.read_text()}")
        wait_until(lambda: self.ctr("version", check=False).returncode == 0, timeout=30)
        return self

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        program = host_tool("ctr", "containerd")
        done = subprocess.run([program, "--address", str(self.socket), *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def pull(self, reference: str, hosts_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        started = time.monotonic()
        done = self.ctr("images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native", *args, reference, check=check)
        done.seconds = time.monotonic() - started  # type: ignore[attr-defined]
        return done

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
