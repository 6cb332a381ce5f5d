"""The test harness itself: a port taken between our pick and the service's bind is retried."""

import socket

from tools.localswarm import free_port, service_argv, start_listening


def test_a_service_whose_port_was_taken_is_started_again_on_another():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = squatter.getsockname()[1]
        ports = iter([taken, free_port(socket.SOCK_DGRAM)])
        used = []

        def argv() -> list[str]:
            used.append(next(ports))
            return service_argv("tracker", "--host", "127.0.0.1", "--port", str(used[-1]), "--metrics-port", "0")

        tracker = start_listening("tracker", argv, "tracker listening", {"P2P_LOG_FORMAT": "json"})
        try:
            assert used[0] == taken and len(used) == 2
            assert tracker.wait_for("tracker listening")["port"] == used[1]
        finally:
            tracker.stop()
