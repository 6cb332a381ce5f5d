"""The registry mirror's pure pieces: paths, upstream names and credentials, part hashing, the
node configuration files."""

import base64
import hashlib
import io
import json

import pytest
from p2p_peer.mirror import Hashing, _split
from p2p_peer.node_config import docker_daemon_json, hosts_toml
from p2p_peer.upstream import load_auths, parse_registries


@pytest.mark.parametrize(
    "path, expected",
    [
        ("library/alpine/manifests/3.20", ("library/alpine", "manifest", "3.20")),
        ("a/b/c/blobs/sha256:" + "0" * 64, ("a/b/c", "blob", "sha256:" + "0" * 64)),
        ("team/blobs/manifests/v1", ("team/blobs", "manifest", "v1")),  # a repository named "blobs"
        ("team/app/blobs/uploads/", ("team/app/blobs/uploads/", None, "")),  # a push: no reference
        ("team/app/tags/list", ("team/app/tags/list", None, "")),
        ("manifests/v1", ("manifests/v1", None, "")),  # no repository
    ],
)
def test_a_registry_path_splits_into_repository_kind_and_reference(path, expected):
    assert _split(path) == expected


@pytest.mark.parametrize("block", [1, 1000, 4096, 10_000])
def test_hashing_gives_the_whole_digest_and_one_digest_per_chunk_whatever_the_blocks(block):
    data = bytes(range(256)) * 97  # 24,832 bytes: 6 chunks of 4096 and a tail
    hashing, out = Hashing(4096), io.BytesIO()
    for start in range(0, len(data), block):
        hashing.write(out, data[start : start + block])
    assert out.getvalue() == data and hashing.whole.hexdigest() == hashlib.sha256(data).hexdigest()
    expected = b"".join(hashlib.sha256(data[i : i + 4096]).digest() for i in range(0, len(data), 4096))
    assert hashing.chunk_digests() == expected


def test_registries_take_credentials_by_name_host_or_docker_hubs_keys(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hubpass").decode()},
        "registry.example:5000": {"username": "u", "password": "p"},
        "broken.example": {"identitytoken": "x"},  # no user and password: not ours to use
    }}))
    found = parse_registries(
        ["docker.io=https://registry-1.docker.io", "mine=https://registry.example:5000/", "other=http://10.0.0.1:5000"], config
    )
    assert found["docker.io"].credentials == ("hubuser", "hubpass")
    assert found["mine"].credentials == ("u", "p") and found["mine"].url == "https://registry.example:5000"
    assert found["other"].credentials is None and found["other"].host == "10.0.0.1:5000"


@pytest.mark.parametrize("value", ["docker.io", "x=ftp://a", "x=https://", "=https://a", "x=https://a/path"])
def test_a_registry_that_is_not_name_equals_url_is_refused_with_why(value):
    with pytest.raises(ValueError, match="NAME=URL"):
        parse_registries([value], None)


def test_an_unreadable_or_broken_auth_file_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_auths(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load_auths(tmp_path / "bad.json")
    (tmp_path / "b64.json").write_text(json.dumps({"auths": {"r": {"auth": "!!!"}}}))
    with pytest.raises(ValueError, match="base64"):
        load_auths(tmp_path / "b64.json")


def test_hosts_toml_lists_the_peer_first_for_pull_and_resolve_then_the_registry():
    text = hosts_toml("http://127.0.0.1:7080", "https://registry-1.docker.io", "500ms")
    import tomllib

    parsed = tomllib.loads(text)
    assert parsed["server"] == "https://registry-1.docker.io"
    assert parsed["host"]["http://127.0.0.1:7080"] == {"capabilities": ["pull", "resolve"], "dial_timeout": "500ms"}
    assert "server" not in tomllib.loads(hosts_toml("http://127.0.0.1:7080", None, "1s"))  # _default


def test_docker_daemon_json_puts_the_mirror_first_and_keeps_the_rest():
    existing = json.dumps({"log-driver": "json-file", "registry-mirrors": ["https://other.example", "http://127.0.0.1:7080/"]})
    merged = json.loads(docker_daemon_json(existing, "http://127.0.0.1:7080"))
    assert merged == {"log-driver": "json-file", "registry-mirrors": ["http://127.0.0.1:7080", "https://other.example"]}
    assert json.loads(docker_daemon_json("", "http://m")) == {"registry-mirrors": ["http://m"]}
    with pytest.raises(ValueError):
        docker_daemon_json("[]", "http://m")
