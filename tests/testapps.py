"""Handlers used by the end-to-end tests (imported by the real prefork workers)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any


def pid(conn: socket.socket, addr: Any) -> None:
    """Answer with the serving worker's pid, then close."""
    conn.sendall(f"{os.getpid()}\n".encode())


def echo(conn: socket.socket, addr: Any) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def peer(conn: socket.socket, addr: Any) -> None:
    """Answer with repr(addr) as the handler received it."""
    conn.sendall(f"{addr!r}\n".encode())


def slow(conn: socket.socket, addr: Any) -> None:
    """Read a number of seconds, sleep that long, answer with our pid."""
    seconds = float(conn.recv(64).decode().strip() or "0")
    time.sleep(seconds)
    conn.sendall(f"{os.getpid()}\n".encode())


def crash(conn: socket.socket, addr: Any) -> None:
    """Raise on 'boom', else answer with our pid."""
    if conn.recv(64).strip() == b"boom":
        raise RuntimeError("handler exploded on purpose")
    conn.sendall(f"{os.getpid()}\n".encode())


def make_pid() -> Any:
    """A factory (APP given as testapps:make_pid())."""
    return pid


not_callable = 42


def hold(conn: socket.socket, addr: Any) -> None:
    """Answer with our pid at once, then hold the connection until the client closes it."""
    conn.sendall(f"{os.getpid()}\n".encode())
    conn.recv(1)
