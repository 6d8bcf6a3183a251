"""A real TCP listener on loopback for the tests of Ray addresses: one that answers the opening of
a connection as a gRPC server does (a SETTINGS frame), or one that accepts and never answers."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

#: An empty HTTP/2 SETTINGS frame: the first thing a gRPC server (Ray's GCS) sends.
SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@contextlib.contextmanager
def loopback_listener(answer: bytes | None) -> Iterator[int]:
    """Listen on a free loopback port (yielded) and accept every connection: send ``answer``
    and close it, or with ``answer`` None hold it open without a byte until the block ends."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            if answer is None:
                held.append(connection)  # accepted, and never a word
            else:
                with connection:
                    connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        server.close()
