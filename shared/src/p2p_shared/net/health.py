"""`p2p-health tracker|seeder`: the container healthcheck. Exit 0 when the service answers.

The tracker is healthy when it answers `connect` over UDP; a seeder when it answers the peer
HELLO over TCP (it listens only once its files are hashed). Ports and the swarm secret come
from the same P2P_PORT and P2P_SWARM_SECRET variables the service reads.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import time

from .. import PROTOCOL_VERSION, messages, wire
from ..auth import Sealer


def tracker_ok(port: int, timeout: float) -> bool:
    secret = os.environ.get("P2P_SWARM_SECRET")
    sealer = Sealer(secret.encode()) if secret else None
    data = messages.encode(messages.Connect(txn=1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data if sealer is None else sealer.seal(data, time.time()), ("127.0.0.1", port))
        answer = sock.recv(65536)
        return messages.decode(answer if sealer is None else sealer.open(answer, time.time())).type == "connected"


def seeder_ok(port: int, timeout: float) -> bool:
    cert = os.environ.get("P2P_TLS_CERT")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain:
        sock = plain
        if cert:  # its own certificate is also a client certificate the seeder accepts
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.load_cert_chain(cert, os.environ.get("P2P_TLS_KEY"))
            sock = context.wrap_socket(plain)
        sock.sendall(wire.encode(wire.Hello(PROTOCOL_VERSION)))
        reader = wire.FrameReader(max_payload=0)
        while (event := reader.next_event()) is None:
            data = sock.recv(64)
            if not data:
                return False
            reader.receive_data(data)
        # A seeder with a swarm secret refuses our unauthenticated HELLO: it still answered.
        return isinstance(event, wire.Hello) or (isinstance(event, wire.Error) and event.code == wire.ErrorCode.UNAUTHORIZED)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ("tracker", "seeder"):
        print("usage: p2p-health tracker|seeder", file=sys.stderr)
        return 2
    role = args[0]
    port = int(os.environ.get("P2P_PORT") or (6969 if role == "tracker" else 7000))
    try:
        ok = (tracker_ok if role == "tracker" else seeder_ok)(port, 2.0)
    except Exception as exc:  # any failure is "unhealthy", said in one line
        print(f"{role} on port {port} not healthy: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
