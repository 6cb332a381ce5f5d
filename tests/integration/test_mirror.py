"""The registry mirror on real processes: a real upstream registry (the CNCF distribution
registry), real peers and tracker, and real clients (containerd's ctr, skopeo, urllib)."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.host_tools import host_tool
from tools.localswarm import scrape

from .conftest import wait_until
from .oci import OCI_INDEX, Containerd, Registry, build_image, digest_of

LAYERS = [300_000, 700_000, 1_500_000]  # random bytes: the gzip'd layers are about as large


@pytest.fixture
def upstream(tmp_path):
    registry = Registry(tmp_path / "registry").start()
    yield registry
    registry.stop()


@pytest.fixture
def containerd(tmp_path):
    host_tool("ctr", "containerd")
    daemon = Containerd(tmp_path / "containerd").start()
    yield daemon
    daemon.stop()


def mirror_peer(swarm, tmp_path: Path, name: str, registry: Registry, *args: str):
    return swarm.add_peer(tmp_path / name, "--registry", f"{registry.host}={registry.url}", *args)


def hosts_dir(tmp_path: Path, peer, registry: Registry, name: str = "hosts") -> Path:
    """containerd's hosts.toml for the upstream, as `p2p-peer containerd-config` writes it."""
    folder = tmp_path / name
    done = _containerd_config(folder, peer.url, registry)
    assert done.returncode == 0, done.stderr
    return folder


def _containerd_config(folder: Path, mirror: str, registry: Registry) -> subprocess.CompletedProcess:
    from tools.localswarm import service_argv

    argv = service_argv("peer", "containerd-config", "--mirror", mirror, "--hosts-dir", str(folder),
                        "--registry", f"{registry.host}={registry.url}")
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def get(url: str, headers: dict | None = None, method: str = "GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as answer:
        return answer.code, dict(answer.headers), answer.read()


def test_ctr_pulls_through_one_peer_then_a_second_peer_and_the_upstream_sends_each_blob_once(
    tmp_path, swarm, upstream, containerd
):
    image = build_image(random.Random(1), "team/app", "v1", LAYERS)
    upstream.push(image)
    first = mirror_peer(swarm, tmp_path, "peer-1", upstream)
    second = mirror_peer(swarm, tmp_path, "peer-2", upstream)
    reference = f"{upstream.host}/team/app:v1"

    pulled = containerd.pull(reference, hosts_dir(tmp_path, first, upstream, "hosts-1"))
    assert "done" in pulled.stdout or pulled.returncode == 0
    check = containerd.ctr("images", "check")
    assert reference in check.stdout and "complete" in check.stdout, check.stdout

    # A second node (its own containerd) through the second peer: the blobs come from the first.
    other = Containerd(tmp_path / "containerd-2").start()
    try:
        other.pull(reference, hosts_dir(tmp_path, second, upstream, "hosts-2"))
        assert "complete" in other.ctr("images", "check").stdout
    finally:
        other.stop()
    gets = upstream.blob_gets()
    amd64 = [d for d, m in image.manifests.items() if b"amd64" in image.blobs[json.loads(m)["config"]["digest"]]][0]
    wanted = {json.loads(image.manifests[amd64])["config"]["digest"], *image.layers()}
    assert {d: gets.get(d, 0) for d in wanted} == {d: 1 for d in wanted}, gets
    second_metrics = scrape(second.metrics_port)
    assert second_metrics[("p2p_peer_registry_blobs_total", (("source", "swarm"),))] == len(wanted)
    assert second_metrics[("p2p_peer_registry_blobs_total", (("source", "upstream"),))] == 0


def test_skopeo_copies_an_image_through_the_mirror_byte_for_byte(tmp_path, swarm, upstream):
    skopeo = host_tool("skopeo", "skopeo")
    image = build_image(random.Random(2), "team/tool", "v2", LAYERS[:2])
    upstream.push(image)
    peer = mirror_peer(swarm, tmp_path, "peer", upstream)
    out = tmp_path / "copy"
    done = subprocess.run(
        [skopeo, "copy", "--all", "--src-tls-verify=false", f"docker://127.0.0.1:{peer.http_port}/team/tool:v2", f"dir:{out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for digest, blob in image.blobs.items():
        assert (out / digest.split(":")[1]).read_bytes() == blob
    assert set(upstream.blob_gets()) == set(image.blobs)


def test_the_api_answers_as_the_distribution_spec_says(tmp_path, swarm, upstream):
    image = build_image(random.Random(3), "team/api", "v3", LAYERS[:1])
    upstream.push(image)
    peer = mirror_peer(swarm, tmp_path, "peer", upstream)
    base = f"{peer.url}/v2"
    status, headers, _ = get(f"{base}/")
    assert status == 200 and headers["Docker-Distribution-API-Version"] == "registry/2.0"
    # By tag: the index, its media type and digest.
    status, headers, body = get(f"{base}/team/api/manifests/v3?ns={upstream.host}", {"Accept": OCI_INDEX})
    assert (status, body, headers["Content-Type"]) == (200, image.index, OCI_INDEX)
    assert headers["Docker-Content-Digest"] == image.index_digest
    status, headers, body = get(f"{base}/team/api/manifests/v3", method="HEAD")  # no ns: the only upstream
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(image.index)
    # By digest; and a blob with a range.
    [(digest, manifest)] = list(image.manifests.items())[:1]
    assert get(f"{base}/team/api/manifests/{digest}")[2] == manifest
    [layer] = image.layers()
    status, headers, body = get(f"{base}/team/api/blobs/{layer}", {"Range": "bytes=10-19"})
    assert (status, body) == (206, image.blobs[layer][10:20]) and headers["Docker-Content-Digest"] == layer
    status, headers, body = get(f"{base}/team/api/blobs/{layer}")
    assert status == 200 and body == image.blobs[layer]
    # Errors as the spec's JSON.
    status, _, body = get(f"{base}/team/api/manifests/nope")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    status, _, body = get(f"{base}/team/api/blobs/sha256:{'0' * 64}")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    status, _, body = get(f"{base}/team/api/blobs/md5:abc")
    assert status == 400 and json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"
    status, _, body = get(f"{base}/team/api/blobs/uploads/", method="POST")
    assert status == 405 and json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert get(f"{base}/team/api/manifests/v3", method="PUT")[0] == 405
    status, _, body = get(f"{base}/team/api/manifests/v3?ns=elsewhere.example")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
    metrics = scrape(peer.metrics_port)
    assert metrics[("p2p_peer_registry_requests_total", (("code", "405"), ("kind", "other")))] == 1
    assert metrics[("p2p_peer_registry_requests_total", (("code", "405"), ("kind", "manifest")))] == 1


def test_four_peers_asking_for_a_new_image_at_once_cost_the_upstream_each_blob_once(tmp_path, swarm, upstream):
    image = build_image(random.Random(4), "team/big", "v1", [4_000_000, 3_000_000, 2_000_000])
    upstream.push(image)
    peers = [mirror_peer(swarm, tmp_path, f"peer-{n}", upstream) for n in range(4)]
    results: dict[tuple[int, str], bytes] = {}
    start = threading.Barrier(len(peers) * len(image.blobs))

    def pull(n: int, digest: str) -> None:
        start.wait()
        results[n, digest] = get(f"{peers[n].url}/v2/team/big/blobs/{digest}?ns={upstream.host}")[2]

    threads = [threading.Thread(target=pull, args=(n, d)) for n in range(len(peers)) for d in image.blobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(results[n, d] == image.blobs[d] for n in range(len(peers)) for d in image.blobs)
    assert upstream.blob_gets() == {d: 1 for d in image.blobs}
    elections = [scrape(p.metrics_port) for p in peers]
    won = sum(m[("p2p_peer_registry_elections_total", (("result", "won"),))] for m in elections)
    assert won == len(image.blobs)
    assert not [p.name for p in peers if "Traceback" in p.output]


def test_with_the_upstream_down_a_cached_image_pulls_and_an_uncached_one_fails_fast(tmp_path, swarm, upstream, containerd):
    image = build_image(random.Random(5), "team/app", "v1", LAYERS[:2])
    upstream.push(image)
    peer = mirror_peer(swarm, tmp_path, "peer", upstream)
    reference = f"{upstream.host}/team/app:v1"
    hosts = hosts_dir(tmp_path, peer, upstream)
    containerd.pull(reference, hosts)
    upstream.stop()
    other = Containerd(tmp_path / "containerd-2").start()
    try:
        other.pull(reference, hosts)  # the tag from the peer's last answer, the blobs from its cache
        assert "complete" in other.ctr("images", "check").stdout
        started = time.monotonic()
        failed = other.pull(f"{upstream.host}/team/other:v1", hosts, check=False)
        assert failed.returncode != 0 and time.monotonic() - started < 10
    finally:
        other.stop()
    started = time.monotonic()
    status, _, body = get(f"{peer.url}/v2/team/other/blobs/sha256:{'1' * 64}")
    assert status in (502, 503) and time.monotonic() - started < 1.0, body


def test_with_the_peer_down_containerd_pulls_from_the_upstream(tmp_path, swarm, upstream, containerd):
    image = build_image(random.Random(6), "team/app", "v1", LAYERS[:1])
    upstream.push(image)
    peer = mirror_peer(swarm, tmp_path, "peer", upstream)
    hosts = hosts_dir(tmp_path, peer, upstream)
    peer.stop()
    started = time.monotonic()
    containerd.pull(f"{upstream.host}/team/app:v1", hosts)
    assert time.monotonic() - started < 30
    assert "complete" in containerd.ctr("images", "check").stdout


def test_a_hostile_upstream_blob_is_never_completed_and_is_counted(tmp_path, swarm, upstream):
    image = build_image(random.Random(7), "team/app", "v1", LAYERS[:1])
    upstream.push(image)
    [layer] = image.layers()
    # Bit rot, or a hostile registry: the stored bytes are not the blob any more.
    data = next((upstream.workdir / "storage").rglob(f"blobs/sha256/*/{layer.split(':')[1]}/data"))
    data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()))
    peer = mirror_peer(swarm, tmp_path, "peer", upstream)
    with pytest.raises((urllib.error.URLError, ConnectionError, http_client_errors())):
        with urllib.request.urlopen(f"{peer.url}/v2/team/app/blobs/{layer}", timeout=60) as answer:
            answer.read()  # cut short before its last byte
    metrics = scrape(peer.metrics_port)
    assert metrics[("p2p_peer_registry_digest_mismatches_total", (("source", "upstream"),))] == 1
    assert json.loads(get(f"{peer.url}/files")[2])["files"] == []  # nothing of it kept
    assert "Traceback" not in peer.output


def http_client_errors():
    import http.client

    return http.client.HTTPException


def test_a_hostile_swarm_file_under_a_blobs_name_is_dropped_and_the_blob_comes_from_the_upstream(tmp_path, swarm, upstream):
    image = build_image(random.Random(8), "team/app", "v1", LAYERS[:1])
    upstream.push(image)
    [layer] = image.layers()
    decoy = tmp_path / "decoy" / layer
    decoy.parent.mkdir()
    decoy.write_bytes(random.Random(9).randbytes(len(image.blobs[layer])))
    swarm.add_seeder([decoy])  # a member registering other bytes under the blob's name
    peer = mirror_peer(swarm, tmp_path, "peer", upstream)
    url = f"{peer.url}/v2/team/app/blobs/{layer}"
    with pytest.raises((urllib.error.URLError, ConnectionError, http_client_errors())):
        with urllib.request.urlopen(url, timeout=60) as answer:
            answer.read()
    status, _, body = get(url)
    assert status == 200 and body == image.blobs[layer] and digest_of(body) == layer
    metrics = scrape(peer.metrics_port)
    assert metrics[("p2p_peer_registry_digest_mismatches_total", (("source", "swarm"),))] == 1
    assert upstream.blob_gets() == {layer: 1}
    assert "Traceback" not in peer.output


def test_basic_auth_at_the_upstream_with_credentials_from_a_docker_config(tmp_path, swarm):
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"puller:{bcrypt.hashpw(b's3cret-pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    registry = Registry(tmp_path / "registry", htpasswd=htpasswd).start()
    try:
        auth = "Basic " + base64.b64encode(b"puller:s3cret-pw").decode()
        image = build_image(random.Random(10), "team/private", "v1", LAYERS[:1])
        registry.push(image, auth=auth)
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"auths": {registry.host: {"auth": base64.b64encode(b"puller:s3cret-pw").decode()}}}))
        with_creds = mirror_peer(swarm, tmp_path, "peer", registry, "--registry-auth", str(config))
        without = mirror_peer(swarm, tmp_path, "peer-2", registry)
        [layer] = image.layers()
        status, _, body = get(f"{with_creds.url}/v2/team/private/blobs/{layer}")
        assert status == 200 and body == image.blobs[layer]
        assert get(f"{with_creds.url}/v2/team/private/manifests/v1")[2] == image.index
        status, _, body = get(f"{without.url}/v2/team/private/manifests/v1")
        assert status == 401 and json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    finally:
        registry.stop()


@pytest.mark.parametrize("parts", [
    ("--registry-part-size", "512KiB"),  # a part is one chunk: one connection to the upstream
    ("--registry-part-size", "1MiB", "--chunk-size", "131072"),  # 8 chunks: four ranges at once
], ids=["one-stream", "four-streams"])
def test_large_blobs_come_in_parts_each_sent_once_by_the_upstream_to_peers_asking_at_once(tmp_path, swarm, upstream, parts):
    image = build_image(random.Random(11), "team/large", "v1", [3_000_000, 2_500_000])
    upstream.push(image)
    peers = [mirror_peer(swarm, tmp_path, f"peer-{n}", upstream, *parts) for n in range(4)]
    layers = image.layers()
    results: dict[tuple[int, str], bytes] = {}
    start = threading.Barrier(len(peers) * len(layers))

    def pull(n: int, digest: str) -> None:
        start.wait()
        results[n, digest] = get(f"{peers[n].url}/v2/team/large/blobs/{digest}")[2]

    threads = [threading.Thread(target=pull, args=(n, d)) for n in range(len(peers)) for d in layers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(results[n, d] == image.blobs[d] for n in range(len(peers)) for d in layers)
    assert upstream.blob_bytes() == {d: len(image.blobs[d]) for d in layers}  # each byte once, in parts
    assert not [p.name for p in peers if "Traceback" in p.output]
    # A range of a large blob, and the blob again from the cache.
    [first] = layers[:1]
    status, headers, body = get(f"{peers[0].url}/v2/team/large/blobs/{first}", {"Range": "bytes=600000-1200000"})
    assert (status, body) == (206, image.blobs[first][600000:1200001])
    assert get(f"{peers[1].url}/v2/team/large/blobs/{first}")[2] == image.blobs[first]
