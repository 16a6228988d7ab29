"""Exit 0 when every named service (postgres, redis) accepts a TCP connection on 127.0.0.1."""

from __future__ import annotations

import socket
import sys

PORTS = {"postgres": 5432, "redis": 6379}


def reachable(service: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", PORTS[service]), timeout=1):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(0 if all(reachable(name) for name in sys.argv[1:]) else 1)
