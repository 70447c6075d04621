"""Clients that tell, for every attempt during a stop, whether it was served, not accepted, or dropped.

The stop's contract (README, "Signals"): a connection the server accepted is
answered; one it does not serve is never accepted (refused, or its handshake
left unanswered until the client gives up). So each attempt is one of

- ``served``: the whole answer came back;
- ``not accepted``: connect() was refused or timed out;
- ``dropped``: connect() succeeded (the kernel completed the handshake) but the
  answer never came: end of file, a reset, or silence. Always a failure.

The HTTP client reuses connections (keep-alive) and, as RFC 9112 section 9.3.1
allows, retries an idempotent request once on a new connection when a reused
one is closed before any byte of the answer: that is counted as ``retried``,
not as a drop. A fresh connection closed that way is a drop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil

SERVED, NOT_ACCEPTED, DROPPED, RETRIED = "served", "not accepted", "dropped", "retried"


def assert_master_sleeps(pid: int, seconds: float = 2.0) -> None:
    """The master uses no CPU and wakes at most twice in ``seconds``: it sleeps in its selector (a deadline left
    in the past would wake it at once, forever)."""
    master = psutil.Process(pid)
    before, switches = master.cpu_times(), master.num_ctx_switches().voluntary
    time.sleep(seconds)
    after = master.cpu_times()
    used = (after.user + after.system) - (before.user + before.system)
    assert used < 0.05, f"the master used {used:.2f}s of CPU in {seconds}s"
    woken = master.num_ctx_switches().voluntary - switches
    assert woken <= 2, f"the master woke {woken} times in {seconds}s"
CONNECT_TIMEOUT = 3.0  # a handshake the server leaves unanswered: the client gives up (not accepted)
ANSWER_TIMEOUT = 20.0  # far beyond any drain here: silence this long is a drop


class Attempts:
    """Counts of outcomes (and, for drops, why), shared by the client threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.lock = threading.Lock()

    def add(self, outcome: str, why: str = "") -> None:
        with self.lock:
            self.counts[outcome] += 1
            if outcome == DROPPED:
                self.drops[why] += 1

    def __getitem__(self, outcome: str) -> int:
        return self.counts[outcome]


class StopLoad:
    """``threads`` client threads, each running ``attempt(address, attempts, stopped)`` in a loop."""

    def __init__(self, addresses: list[Any], threads: int,
                 attempt: Callable[[Any, Attempts, threading.Event], None]) -> None:
        self.attempts = Attempts()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(addresses[n % len(addresses)], attempt), daemon=True)
                        for n in range(threads)]

    def loop(self, address: Any, attempt: Callable[[Any, Attempts, threading.Event], None]) -> None:
        while not self.stopped.is_set():
            attempt(address, self.attempts, self.stopped)

    def __enter__(self) -> StopLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(ANSWER_TIMEOUT + CONNECT_TIMEOUT + 5)

    def wait_served(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.attempts[SERVED] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.attempts.counts} after {timeout}s")
            time.sleep(0.01)


def connect(address: Any) -> socket.socket | None:
    """A connected socket, or None when the server did not accept (refused, or no handshake)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.getaddrinfo(*address[:2])[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(address)
    except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
        sock.close()
        return None
    sock.settimeout(ANSWER_TIMEOUT)
    return sock


def ask_slow(payload: bytes) -> Callable[[Any, Attempts, threading.Event], None]:
    """One connection per attempt to ``testapps:slow``: send ``payload``, expect a pid back."""

    def attempt(address: Any, attempts: Attempts, stopped: threading.Event) -> None:
        sock = connect(address)
        if sock is None:
            attempts.add(NOT_ACCEPTED)
            time.sleep(0.01)
            return
        with sock:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while data := sock.recv(100):
                    answer += data
            except OSError as exc:
                attempts.add(DROPPED, type(exc).__name__)
                return
        if answer.strip().isdigit():
            attempts.add(SERVED)
        else:
            attempts.add(DROPPED, "end of file" if not answer else f"answer {answer!r}")

    return attempt


class KeepAliveClient:
    """HTTP/1.1 GETs on one reused connection per thread, as a browser or a proxy's pool does."""

    def __init__(self, path: str) -> None:
        self.request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        self.socks: dict[int, socket.socket] = {}

    def __call__(self, address: Any, attempts: Attempts, stopped: threading.Event) -> None:
        me = threading.get_ident()
        sock = self.socks.pop(me, None)
        reused = sock is not None
        if sock is None:
            sock = connect(address)
            if sock is None:
                attempts.add(NOT_ACCEPTED)
                time.sleep(0.01)
                return
        try:
            sock.sendall(self.request)
            head, body_left = read_head(sock)
            while body_left > 0:
                data = sock.recv(body_left)
                if not data:
                    raise ConnectionError("end of file in the body")
                body_left -= len(data)
        except NothingBack as exc:
            sock.close()
            if reused:
                attempts.add(RETRIED)  # RFC 9112 9.3.1: closed before any byte; retry on a new connection
            else:
                attempts.add(DROPPED, str(exc))
            return
        except OSError as exc:
            sock.close()
            attempts.add(DROPPED, f"{type(exc).__name__} after part of the answer")
            return
        if not head.startswith(b"HTTP/1.1 200"):
            attempts.add(DROPPED, f"answer {head[:40]!r}")
            sock.close()
            return
        attempts.add(SERVED)
        if b"\r\nconnection: close" in head.lower():
            sock.close()
        else:
            self.socks[me] = sock


class NothingBack(Exception):
    """The connection ended before any byte of the answer."""


def read_head(sock: socket.socket) -> tuple[bytes, int]:
    """The response head, and how many body bytes follow (Content-Length)."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
            if not buffer:
                raise NothingBack("reset before the answer") from None
        if not data:
            if not buffer:
                raise NothingBack("end of file before the answer")
            raise ConnectionError("end of file in the head")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, length - len(rest)
