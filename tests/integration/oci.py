"""Real registries and real clients for the mirror's tests: Debian's CNCF distribution registry
(`docker-registry`) as the upstream, on a free port, with images built by tools.oci pushed to
it; a private containerd."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.host_tools import host_tool
from tools.localswarm import free_port
from tools.oci import OCI_INDEX, Image, build_image, digest_of, push  # noqa: F401 (the tests' imports)

from .conftest import wait_until


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
        push(self.url, image, auth)

    def blob_bytes(self) -> dict[str, int]:
        """Blob bytes the registry sent (whole or in ranges), by digest, from its access log."""
        sent: dict[str, int] = {}
        pattern = r'"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64})[^"]*" 20[06] (\d+)'
        for match in re.finditer(pattern, self.log.read_text()):
            sent[match[1]] = sent.get(match[1], 0) + int(match[2])
        return sent

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
