"""Handlers used by the end-to-end tests (imported by the real prefork workers)."""

from __future__ import annotations

import contextlib
import fcntl
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


# --- connection preparation (tests/test_access.py, test_tls.py, test_proxy_protocol.py) ---


def pid_peer(conn: socket.socket, addr: Any) -> None:
    """Answer ``pid repr(addr)``: which worker served, and whom it believed it served."""
    conn.sendall(f"{os.getpid()} {addr!r}\n".encode())


def tls_info(conn: socket.socket, addr: Any) -> None:
    """Answer ``pid class version client-CN``: what the handler was handed."""
    import ssl

    name = "-"
    if isinstance(conn, ssl.SSLSocket):
        cert = conn.getpeercert() or {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    name = value
    version = conn.version() if isinstance(conn, ssl.SSLSocket) else "-"
    conn.sendall(f"{os.getpid()} {type(conn).__name__} {version} {name}\n".encode())


def line(conn: socket.socket, addr: Any) -> None:
    """Read up to a newline (however slowly it comes), then answer with our pid."""
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(1024)
        if not chunk:
            return
        data += chunk
    conn.sendall(f"{os.getpid()}\n".encode())


def leave(conn: socket.socket, addr: Any) -> None:
    """Leave as the request says: 'exit' raises SystemExit(3), 'interrupt' KeyboardInterrupt, '_exit' os._exit(0)."""
    how = conn.recv(64).strip()
    if how == b"exit":
        raise SystemExit(3)
    if how == b"interrupt":
        raise KeyboardInterrupt
    if how == b"_exit":
        os._exit(0)
    conn.sendall(f"{os.getpid()}\n".encode())


def forks(conn: socket.socket, addr: Any) -> None:
    """b"return" / b"exit": fork a child that returns from the handler / raises SystemExit(7); answer
    ``child-pid status`` once it has exited. Anything else: answer ``our-pid 0``."""
    how = conn.recv(64).strip()
    if how not in (b"return", b"exit"):
        conn.sendall(f"{os.getpid()} 0\n".encode())
        return
    child = os.fork()
    if child == 0:
        if how == b"exit":
            raise SystemExit(7)
        return  # back into the worker's code: it must leave at once
    _, status = os.waitpid(child, 0)
    conn.sendall(f"{child} {os.waitstatus_to_exitcode(status)}\n".encode())


def slow_boot() -> Any:
    """A factory that takes $SLOW_BOOT seconds to boot (a slow import; or as many as the file
    $SLOW_BOOT_FILE says, read at each boot), then serves ``slow`` (an empty request: at once)."""
    path = os.environ.get("SLOW_BOOT_FILE")
    with open(path) if path else contextlib.nullcontext(None) as fh:
        delay = fh.read() if fh else os.environ.get("SLOW_BOOT", "0")
    time.sleep(float(delay))
    return slow


def spin(conn: socket.socket, addr: Any) -> None:
    """Read a number of seconds, compute (in Python) that long in ``spin_busily``, answer with our pid."""
    spin_busily(float(conn.recv(64).decode().strip() or "0"))
    conn.sendall(f"{os.getpid()}\n".encode())


def spin_busily(seconds: float) -> int:
    deadline, count = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        count += 1
    return count


def budget_boot() -> Any:
    """A factory that boots while the number in the file $BOOT_BUDGET is above 0 (taking one), else fails;
    each boot takes $SLOW_BOOT seconds. Serves ``pid``."""
    with open(os.environ["BOOT_BUDGET"], "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # workers boot at once: one at a time takes from the budget
        left = int(fh.read())
        if left <= 0:
            raise RuntimeError("boot budget spent, failing on purpose")
        fh.seek(0)
        fh.truncate()
        fh.write(str(left - 1))
    time.sleep(float(os.environ.get("SLOW_BOOT", "0")))
    return pid
