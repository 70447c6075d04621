"""Built-in handlers, so that a new user can run the server with nothing of their own.

    prefork run prefork.examples:echo
    prefork run prefork.examples:hello
"""

from __future__ import annotations

import socket
from typing import Any

HELLO_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 14\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"Hello, World!\n"
)


def echo(conn: socket.socket, addr: Any) -> None:
    """Send back every byte received until the client closes its side."""
    while data := conn.recv(65536):
        conn.sendall(data)


def hello(conn: socket.socket, addr: Any) -> None:
    """Answer one HTTP request with "Hello, World!" and close (for curl and load tools)."""
    request = b""
    while b"\r\n\r\n" not in request and len(request) < 65536:
        chunk = conn.recv(65536)
        if not chunk:
            return
        request += chunk
    conn.sendall(HELLO_RESPONSE)
