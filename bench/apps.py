"""Handlers the benchmarks run under prefork (``bench.apps:pid``, ``bench.apps:probe``)."""

from __future__ import annotations

import os
import socket
from typing import Any


def pid(conn: socket.socket, addr: Any) -> None:
    """Answer with the serving worker's pid and close: counts connections per worker."""
    conn.sendall(b"%d\n" % os.getpid())


def probe(conn: socket.socket, addr: Any) -> None:
    """Read one command byte, answer with our pid; on b"h" stay busy until the client closes.

    Holding workers busy is how the recovery benchmarks make sure the next
    connection can only be accepted by the worker they are waiting for.
    """
    command = conn.recv(1)
    conn.sendall(b"%d\n" % os.getpid())
    if command == b"h":
        while conn.recv(4096):
            pass


def slow_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The graceful-stop benchmark's app (bench/stop.py): 0.3 s of work per request."""
    import time

    time.sleep(0.3)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


def ballast() -> Any:
    """A factory that holds $BALLAST_MB megabytes in each worker (written, so the pages are its own), then
    serves ``pid``: an app whose workers are heavy, for the reload memory bench."""
    size = int(os.environ.get("BALLAST_MB", "50")) * 1024 * 1024
    _held.append(bytearray(b"x") * size)
    return pid


_held: list[bytearray] = []
