"""The TLS contexts, shaking hands in memory (ssl.MemoryBIO: no sockets), with certificates
from the project's own deploy/make-certs.sh: the swarm's CA, and another CA's."""

import ssl
import subprocess
from pathlib import Path

import pytest

from p2p_shared.errors import P2PError
from p2p_shared.net.tls import client_context, server_context

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cas(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("certs")
    for name in ("swarm", "other"):
        subprocess.run([str(REPO / "deploy" / "make-certs.sh"), str(base / name)], check=True, capture_output=True)
    return base / "swarm", base / "other"


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> None:
    """Both sides' handshakes to the end, or the ssl.SSLError one of them raised."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client.wrap_bio(to_client, to_server, server_side=False, server_hostname=None)
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, end in (("client", client_end), ("server", server_end)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            # TLS 1.3 finishes the client first: a server's refusal arrives with the first read.
            client_end.write(b"ping")
            server_end.read(4)
            return
    raise AssertionError("handshake did not finish")


def files(certs: Path, role: str) -> tuple[Path, Path]:
    return certs / f"{role}.crt", certs / f"{role}.key"


def test_members_of_the_swarm_shake_hands(cas):
    swarm, _ = cas
    handshake(client_context(swarm / "ca.crt", *files(swarm, "leecher")), server_context(*files(swarm, "seeder"), swarm / "ca.crt"))


def test_the_leecher_refuses_a_seeder_certificate_another_ca_signed(cas):
    swarm, other = cas
    impostor = server_context(*files(other, "seeder"), swarm / "ca.crt")  # it would accept us
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(client_context(swarm / "ca.crt", *files(swarm, "leecher")), impostor)


def test_a_seeder_with_a_ca_refuses_leechers_without_a_certificate_it_signed(cas):
    swarm, other = cas
    seeder = server_context(*files(swarm, "seeder"), swarm / "ca.crt")
    with pytest.raises(ssl.SSLError):
        handshake(client_context(swarm / "ca.crt", None, None), seeder)
    with pytest.raises(ssl.SSLError):
        handshake(client_context(swarm / "ca.crt", *files(other, "leecher")), seeder)


def test_a_seeder_without_a_ca_serves_leechers_without_certificates(cas):
    swarm, _ = cas
    handshake(client_context(swarm / "ca.crt", None, None), server_context(*files(swarm, "seeder"), None))


def test_both_sides_refuse_tls_older_than_1_2_and_leechers_ignore_host_names(cas):
    swarm, _ = cas
    client = client_context(swarm / "ca.crt", None, None)
    server = server_context(*files(swarm, "seeder"), swarm / "ca.crt")
    assert client.minimum_version == server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server_context(*files(swarm, "seeder"), None).verify_mode == ssl.CERT_NONE


def test_unreadable_tls_files_are_one_clear_error(tmp_path, cas):
    swarm, _ = cas
    with pytest.raises(P2PError, match="^cannot load TLS files: "):
        client_context(tmp_path / "missing-ca.crt", None, None)
    (tmp_path / "garbage.crt").write_text("not a certificate")
    with pytest.raises(P2PError, match="^cannot load TLS files: "):
        server_context(tmp_path / "garbage.crt", swarm / "seeder.key", None)
