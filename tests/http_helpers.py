"""Helpers for the HTTP tests: start prefork --wsgi, talk raw HTTP, read the answers back."""

from __future__ import annotations

import http.client
import io
import socket
import time
from typing import Any

from conftest import Server, wait_for


def start_http(server: Server, *args: str, app: str = "wsgiapps:app", workers: int = 2) -> Server:
    server.start("--wsgi", *args, app=app, workers=workers)
    return server.wait_ready(workers)


class _Unclosable(io.BytesIO):
    def close(self) -> None:
        pass  # HTTPResponse closes its file after each body: the next response is in it too


class _Bytes:
    """Enough of a socket for http.client.HTTPResponse to read responses out of bytes."""

    def __init__(self, data: bytes) -> None:
        self.file = _Unclosable(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self.file


def parse_responses(data: bytes, methods: list[str] | None = None) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response in ``data``, in order: (status, headers with lower-case names, body)."""
    source = _Bytes(data)
    answers = []
    for method in methods or ["GET"] * data.count(b"HTTP/1.1 "):
        if source.file.tell() >= len(data):
            break
        response = http.client.HTTPResponse(source, method=method)  # type: ignore[arg-type]
        response.begin()
        body = response.read()
        answers.append((response.status, {k.lower(): v for k, v in response.getheaders()}, body))
    return answers


def connect(address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def read_response(sock: socket.socket, method: str = "GET") -> http.client.HTTPResponse:
    """One response from a connection that stays open."""
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    return response


def get(address: tuple[str, int], path: str, headers: dict[str, str] | None = None,
        method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def assert_validator_clean(server: Server) -> None:
    """wsgiref.validate raised nothing and warned nothing in any worker."""
    log = server.log()
    assert "AssertionError" not in log and "WSGIWarning" not in log, log


def wait_pid_answers(address: tuple[str, int]) -> int:
    """The pid that answers a plain GET (retrying while the server starts)."""
    def attempt() -> Any:
        try:
            return int(get(address, "/")[2])
        except OSError:
            time.sleep(0.05)
            return None
    return int(wait_for(attempt, 20, what="an answer"))
