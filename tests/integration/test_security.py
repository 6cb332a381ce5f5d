"""The swarm secret on real processes: members work together, strangers get nothing."""

import socket

from p2p_shared import messages, wire
from tools.localswarm import LocalSwarm, free_port, random_file, sha256_file

from .conftest import scrape

SECRET = "correct horse battery staple"


def test_a_swarm_with_a_secret_works_and_refuses_strangers(tmp_path):
    data = random_file(tmp_path / "seed" / "private.bin", 3 << 20)
    metrics = free_port()
    with LocalSwarm(tmp_path, env={"P2P_SWARM_SECRET": SECRET}) as swarm:
        tracker = swarm.start_tracker("--metrics-port", str(metrics))
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

    from p2p_leecher.peer import open_peer
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


def test_mutual_tls_on_the_chunk_channel(tmp_path):
    import subprocess
    from pathlib import Path

    certs = tmp_path / "certs"
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([str(repo / "deploy" / "make-certs.sh"), str(certs)], check=True, capture_output=True)
    data = random_file(tmp_path / "seed" / "secret.bin", 5 << 20)
    seeder_tls = ["--tls-cert", str(certs / "seeder.crt"), "--tls-key", str(certs / "seeder.key"),
                  "--tls-ca", str(certs / "ca.crt")]
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_tracker()
        seeders = [swarm.add_seeder([data], *seeder_tls) for _ in range(2)]
        member = swarm.leecher("secret.bin", tmp_path / "out", "--min-seeders", "2", "--tls-ca", str(certs / "ca.crt"),
                               "--tls-cert", str(certs / "leecher.crt"), "--tls-key", str(certs / "leecher.key"))
        assert member.wait(60) == 0, member.output
        assert sha256_file(tmp_path / "out" / "secret.bin") == sha256_file(data)
        # Without a client certificate, or without TLS at all, the seeders serve nothing.
        no_cert = swarm.leecher("secret.bin", tmp_path / "out2", "--wait", "2", "--tls-ca", str(certs / "ca.crt"))
        plain = swarm.leecher("secret.bin", tmp_path / "out3", "--wait", "2")
        assert no_cert.wait(60) == 1 and plain.wait(60) == 1
        assert not (tmp_path / "out2" / "secret.bin").exists() and not (tmp_path / "out3" / "secret.bin").exists()
        # And the payload never crosses in clear: a plain HELLO gets no protocol answer.
        with socket.create_connection(("127.0.0.1", seeders[0].port), timeout=10) as tcp:
            tcp.sendall(wire.encode(wire.Hello(1)))
            answer = tcp.recv(4096)
        assert wire.FRAME_HEADER.size > len(answer) or answer[0] not in (1, 8)
