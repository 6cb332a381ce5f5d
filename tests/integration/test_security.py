"""The swarm secret on real processes: members work together, strangers get nothing."""

import os
import socket
import subprocess
from pathlib import Path

import pytest

from p2p_shared import messages, wire
from p2p_shared.auth import peer_proof
from p2p_shared.hashing import hash_chunks
from p2p_shared.manifest import Manifest
from tools.localswarm import LocalSwarm, random_file, sha256_file

from .conftest import scrape

REPO = Path(__file__).resolve().parents[2]

SECRET = "correct horse battery staple"


def test_a_swarm_with_a_secret_works_and_refuses_strangers(tmp_path):
    data = random_file(tmp_path / "seed" / "private.bin", 3 << 20)
    with LocalSwarm(tmp_path, env={"P2P_SWARM_SECRET": SECRET}) as swarm:
        tracker = swarm.start_tracker(metrics=True)
        metrics = tracker.metrics_port
        seeder = swarm.add_seeder([data])
        leecher = swarm.leecher("private.bin", tmp_path / "out")
        assert leecher.wait(60) == 0, leecher.output
        assert sha256_file(tmp_path / "out" / "private.bin") == sha256_file(data)

        # A stranger's datagrams get no answer at all, and are counted.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(1.0)
            udp.sendto(messages.encode(messages.Connect(txn=1)), ("127.0.0.1", swarm.tracker_port))
            try:
                udp.recv(65536)
                answered = True
            except TimeoutError:
                answered = False
        assert not answered
        refused = scrape(metrics)[("p2p_tracker_refused_datagrams_total", (("reason", "unauthenticated"),))]
        assert refused == 1

        # A stranger's peer connection is refused in the handshake.
        with socket.create_connection(("127.0.0.1", seeder.port), timeout=10) as tcp:
            tcp.sendall(wire.encode(wire.Hello(1)))
            reader = wire.FrameReader()
            while (event := reader.next_event()) is None:
                chunk = tcp.recv(4096)
                assert chunk, "closed without a word"
                reader.receive_data(chunk)
        assert isinstance(event, wire.Error) and event.code == wire.ErrorCode.UNAUTHORIZED
    for service in (tracker, seeder, leecher):
        assert "no swarm secret" not in service.output


def test_without_a_secret_each_service_warns_once(swarm, tmp_path):
    data = random_file(tmp_path / "seed" / "open.bin", 1000)
    seeder = swarm.add_seeder([data])
    leecher = swarm.leecher("open.bin", tmp_path / "out")
    assert leecher.wait(60) == 0
    for service in (swarm.tracker, seeder, leecher):
        warnings = [e for e in service.events() if "no swarm secret" in e.get("event", "")]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning"


async def test_peer_handshake_needs_the_same_secret_on_both_sides(tmp_path):
    import pytest

    from p2p_shared.net.peer_client import open_peer
    from p2p_shared.errors import PeerRejected

    data = random_file(tmp_path / "seed" / "p.bin", 1000)
    with LocalSwarm(tmp_path / "a", env={"P2P_SWARM_SECRET": SECRET}) as private, LocalSwarm(tmp_path / "b") as public:
        private.start_tracker()
        public.start_tracker()
        member = private.add_seeder([data])
        outsider = public.add_seeder([data])
        conn = await open_peer("127.0.0.1", member.port, chunk_size=1, depth=0, timeout=5, secret=SECRET.encode())
        conn.close()
        with pytest.raises(PeerRejected, match="unauthorized"):
            await open_peer("127.0.0.1", member.port, chunk_size=1, depth=0, timeout=5, secret=b"a wrong secret!!")
        with pytest.raises(PeerRejected, match="unauthorized"):
            await open_peer("127.0.0.1", member.port, chunk_size=1, depth=0, timeout=5)
        with pytest.raises(PeerRejected, match="does not hold the swarm secret"):
            await open_peer("127.0.0.1", outsider.port, chunk_size=1, depth=0, timeout=5, secret=SECRET.encode())


def read_until_closed(sock: socket.socket) -> list:
    reader, events = wire.FrameReader(), []
    while data := sock.recv(65536):
        reader.receive_data(data)
        while (event := reader.next_event()) is not None:
            events.append(event)
    return events


@pytest.mark.parametrize("secret", [SECRET.encode(), b"a wrong secret!!"], ids=["right", "wrong"])
def test_a_peer_proving_a_wrong_secret_gets_unauthorized_and_nothing_served(tmp_path, secret):
    """The client's side of the handshake, raw: HELLO with the auth flag and a nonce, the
    seeder's HELLO and proof, then our proof and, pipelined behind it, a chunk request."""
    data = random_file(tmp_path / "seed" / "p.bin", 1000)
    file_id = Manifest("p.bin", 1000, 512 * 1024, hash_chunks(data, 1000, 512 * 1024)).file_id
    with LocalSwarm(tmp_path, env={"P2P_SWARM_SECRET": SECRET}) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data], metrics=True)
        with socket.create_connection(("127.0.0.1", seeder.port), timeout=10) as tcp:
            nonce = os.urandom(wire.NONCE_BYTES)
            tcp.sendall(wire.encode(wire.Hello(1, wire.FLAG_AUTH, nonce)))
            reader, greeting = wire.FrameReader(), []
            while len(greeting) < 2:
                reader.receive_data(tcp.recv(4096))
                while (event := reader.next_event()) is not None:
                    greeting.append(event)
            hello, server_proof = greeting
            assert server_proof.proof == peer_proof(SECRET.encode(), b"server", nonce, hello.nonce)
            proof = peer_proof(secret, b"client", nonce, hello.nonce)
            tcp.sendall(wire.encode(wire.Auth(proof)) + wire.encode(wire.Request(bytes.fromhex(file_id), 0)))
            if secret != SECRET.encode():
                events = read_until_closed(tcp)
            else:
                reader = wire.FrameReader()
                while (event := reader.next_event()) is None:
                    reader.receive_data(tcp.recv(65536))
                events = [event]
        refused = scrape(seeder.metrics_port)[("p2p_seeder_requests_refused_total", (("code", "unauthorized"),))]
    if secret == SECRET.encode():  # the same exchange with the right proof is served
        [chunk] = events
        assert isinstance(chunk, wire.Chunk) and bytes(chunk.data) == data.read_bytes()
        assert refused == 0
    else:
        [error] = events  # nothing but the refusal, then the seeder closed
        assert isinstance(error, wire.Error) and error.code == wire.ErrorCode.UNAUTHORIZED
        assert refused == 1


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory):
    """The swarm's CA and certificates, and another CA's (same names, another signer)."""
    base = tmp_path_factory.mktemp("certs")
    for name in ("swarm", "other"):
        subprocess.run([str(REPO / "deploy" / "make-certs.sh"), str(base / name)], check=True, capture_output=True)
    return base / "swarm", base / "other"


def tls_flags(certs: Path, role: str) -> list[str]:
    return ["--tls-cert", str(certs / f"{role}.crt"), "--tls-key", str(certs / f"{role}.key"),
            "--tls-ca", str(certs / "ca.crt")]


def test_mutual_tls_on_the_chunk_channel(tmp_path, two_cas):
    certs, _ = two_cas
    data = random_file(tmp_path / "seed" / "secret.bin", 5 << 20)
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeders = [swarm.add_seeder([data], *tls_flags(certs, "seeder"), metrics=True) for _ in range(2)]
        member = swarm.leecher("secret.bin", tmp_path / "out", "--min-seeders", "2", *tls_flags(certs, "leecher"))
        assert member.wait(60) == 0, member.output
        assert sha256_file(tmp_path / "out" / "secret.bin") == sha256_file(data)
        served = sum(scrape(s.metrics_port)[("p2p_seeder_chunks_served_total", ())] for s in seeders)
        # Without a client certificate, or without TLS at all, the seeders serve nothing.
        no_cert = swarm.leecher("secret.bin", tmp_path / "out2", "--wait", "2", "--tls-ca", str(certs / "ca.crt"))
        plain = swarm.leecher("secret.bin", tmp_path / "out3", "--wait", "2")
        assert no_cert.wait(60) == 1 and plain.wait(60) == 1
        assert not (tmp_path / "out2" / "secret.bin").exists() and not (tmp_path / "out3" / "secret.bin").exists()
        assert sum(scrape(s.metrics_port)[("p2p_seeder_chunks_served_total", ())] for s in seeders) == served
        # And the payload never crosses in clear: a plain HELLO gets no protocol answer.
        with socket.create_connection(("127.0.0.1", seeders[0].port), timeout=10) as tcp:
            tcp.sendall(wire.encode(wire.Hello(1)))
            answer = tcp.recv(4096)
        assert wire.FRAME_HEADER.size > len(answer) or answer[0] not in (1, 8)


def test_a_seeder_whose_certificate_another_ca_signed_is_refused_by_the_leecher(tmp_path, two_cas):
    certs, other = two_cas
    data = random_file(tmp_path / "seed" / "secret.bin", 1 << 20)
    # The impostor trusts the swarm's CA, so it would accept our leecher: only the leecher's
    # check of the seeder's certificate stands between them.
    impostor_tls = ["--tls-cert", str(other / "seeder.crt"), "--tls-key", str(other / "seeder.key"),
                    "--tls-ca", str(certs / "ca.crt")]
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        impostor = swarm.add_seeder([data], *impostor_tls, metrics=True)
        member = swarm.leecher("secret.bin", tmp_path / "out", "--wait", "2", *tls_flags(certs, "leecher"))
        assert member.wait(60) == 1
        assert "certificate verify failed" in member.output and "Traceback" not in member.output
        assert scrape(impostor.metrics_port)[("p2p_seeder_chunks_served_total", ())] == 0
    assert not (tmp_path / "out" / "secret.bin").exists()


def test_over_tls_chunks_asked_out_of_order_are_the_right_bytes(tmp_path, two_cas):
    """TLS cannot use sendfile: the payload is read from the file in the loop's fallback, which
    once read chunk 0 from wherever the previous chunk left the file position."""
    from p2p_shared.net.tls import client_context

    certs, _ = two_cas
    chunk = 64 << 10
    data = random_file(tmp_path / "seed" / "order.bin", 3 * chunk)
    raw = data.read_bytes()
    fid = Manifest(name="order.bin", size=len(raw), chunk_size=chunk,
                   digests=hash_chunks(data, len(raw), chunk)).file_id
    fid = bytes.fromhex(fid)
    context = client_context(certs / "ca.crt", certs / "leecher.crt", certs / "leecher.key")
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeder = swarm.add_seeder([data], "--chunk-size", str(chunk), *tls_flags(certs, "seeder"))
        with socket.create_connection(("127.0.0.1", seeder.port), timeout=10) as tcp:
            with context.wrap_socket(tcp) as tls:
                tls.sendall(b"".join(wire.encode(e) for e in (wire.Hello(1), *(wire.Request(fid, i) for i in (2, 0, 1)))))
                reader = wire.FrameReader()
                events = []
                while len(events) < 4:
                    received = tls.recv(1 << 20)
                    assert received, events
                    reader.receive_data(received)
                    while (event := reader.next_event()) is not None:
                        events.append(event)
    hello, *chunks = events
    assert isinstance(hello, wire.Hello)
    assert [(c.index, bytes(c.data)) for c in chunks] == [(i, raw[i * chunk : (i + 1) * chunk]) for i in (2, 0, 1)]
