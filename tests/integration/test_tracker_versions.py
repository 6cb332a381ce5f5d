"""A real tracker process speaks every protocol version: version 1 clients, sending the bytes they
always sent (a connect padded to the size of its answer, see issue 12), get version 1 answers
without partial holders; version 2 clients register as partial holders and look up both kinds,
never hearing of themselves."""

import json
import socket

import pytest

from tools.localswarm import Service, free_port, service_argv

from .conftest import scrape

FILE = {"file_id": "ab" * 32, "name": "shared.bin", "size": 1000, "chunk_size": 400}


@pytest.fixture
def tracker():
    port, metrics = free_port(socket.SOCK_DGRAM), free_port()
    service = Service(
        "tracker",
        service_argv("tracker", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics)),
        {"P2P_LOG_FORMAT": "json"},
    )
    try:
        service.wait_for("tracker listening")
        yield ("127.0.0.1", port), metrics
    finally:
        service.stop()


class RawClient:
    """Datagrams as exact JSON text over a real UDP socket, answers as parsed JSON."""

    def __init__(self, address: tuple[str, int], version: int) -> None:
        self.address, self.version = address, version
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(1.0)
        self.txn = 0
        self.conn = None

    def ask(self, fields: str) -> dict:
        self.txn += 1
        data = ('{"v":%d,"txn":%d,%s}' % (self.version, self.txn, fields)).encode()
        for _ in range(5):  # datagrams may be lost, even on loopback under load
            self.sock.sendto(data, self.address)
            try:
                answer = json.loads(self.sock.recv(65536))
            except TimeoutError:
                continue
            assert answer["txn"] == self.txn
            return answer
        raise TimeoutError(f"no answer to {data!r}")

    def request(self, fields: str) -> dict:
        """A request with a connection id, fetched first."""
        if self.conn is None:
            self.conn = self.ask('"type":"connect"' + " " * 50)["conn"]  # padded: see issue 12
        return self.ask(f'"conn":{self.conn},{fields}')

    def close(self) -> None:
        self.sock.close()


def test_version_1_and_version_2_clients_side_by_side(tracker):
    address, metrics = tracker
    old_seeder, leecher, old_leecher, newer = (RawClient(address, v) for v in (1, 2, 1, 6))
    entry = json.dumps(FILE, separators=(",", ":"))
    fid = FILE["file_id"]
    try:
        ack = old_seeder.request(f'"type":"register","port":7000,"files":[{entry}]')
        assert ack == {"v": 1, "txn": 2, "type": "ack", "interval": 30.0}
        for port in (7100, 7101):
            ack = leecher.request(f'"type":"register","port":{port},"files":[{entry}],"partial":true')
            assert ack["v"] == 2 and ack["type"] == "ack"

        answer = leecher.request('"type":"lookup","name":"shared.bin","port":7100')
        assert answer == {"v": 2, "txn": leecher.txn, "type": "peers", "file": FILE,
                          "peers": [["127.0.0.1", 7000]], "partial": [["127.0.0.1", 7101]]}
        answer = old_leecher.request(f'"type":"lookup","file_id":"{fid}"')
        assert answer == {"v": 1, "txn": old_leecher.txn, "type": "peers", "file": FILE, "peers": [["127.0.0.1", 7000]]}
        listed = old_leecher.request('"type":"list_files"')
        assert listed["v"] == 1 and listed["files"] == [{**FILE, "seeders": 1}]
        listed = leecher.request('"type":"list_files"')
        assert listed["v"] == 2 and listed["files"] == [{**FILE, "seeders": 1, "partial": 2}]
        samples = scrape(metrics)
        assert samples[("p2p_tracker_live_holders", (("kind", "complete"),))] == 1
        assert samples[("p2p_tracker_live_holders", (("kind", "partial"),))] == 2

        # The leecher finished: it registers the file again, complete, and version 1 clients see it.
        leecher.request(f'"type":"register","port":7100,"files":[{entry}]')
        assert leecher.request('"type":"unregister","port":7101')["type"] == "ack"
        answer = old_leecher.request(f'"type":"lookup","file_id":"{fid}"')
        assert sorted(answer["peers"]) == [["127.0.0.1", 7000], ["127.0.0.1", 7100]]
        samples = scrape(metrics)
        assert samples[("p2p_tracker_live_holders", (("kind", "complete"),))] == 2
        assert samples[("p2p_tracker_live_holders", (("kind", "partial"),))] == 0

        # A version 1 client cannot say partial (dropped as malformed); version 6 gets a typed error.
        old_seeder.sock.sendto(
            b'{"v":1,"txn":99,"conn":%d,"type":"register","port":7200,"partial":true}' % old_seeder.conn, address
        )
        error = newer.ask('"type":"connect"' + " " * 100)  # answered after the datagram above: in order, one socket
        assert error == {"v": 5, "txn": 1, "type": "error", "code": "unsupported_version",
                         "message": "this tracker speaks versions 1, 2, 3, 4 and 5"}
        samples = scrape(metrics)
        assert samples[("p2p_tracker_malformed_datagrams_total", (("reason", "invalid"),))] == 1
        assert samples[("p2p_tracker_malformed_datagrams_total", (("reason", "unsupported_version"),))] == 1
    finally:
        for client in (old_seeder, leecher, old_leecher, newer):
            client.close()
