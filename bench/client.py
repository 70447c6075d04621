"""The load client: several forked processes, each a tight loop on one blocking socket.

Blocking sockets are the cheapest thing Python can do per round trip (one
send and one recv system call, no event loop), so a client process spends
about what a server worker spends per operation. Every process starts its
clock at the same monotonic instant and stops at the same one, so the rates
of all processes add up over one common window.

Three kinds of load:

- ``echo``: one persistent connection per process, 64-byte ping-pong.
- ``connect``: connect, one 64-byte round trip, close; again.
- ``pid``: connect, read the pid the server answers with, close (fairness, failures).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

PAYLOAD = b"x" * 64
SETUP_TIMEOUT = 10.0  # seconds for every client process to fork and connect
START_MARGIN = 0.01  # between telling the processes when the window opens and its opening
SOCKET_TIMEOUT = 5.0  # a connection stuck this long counts as failed


@dataclass
class LoadResult:
    """What all client processes did during the window."""

    ops: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0  # user+system seconds, all client processes
    failures: Counter[str] = field(default_factory=Counter)
    pids: Counter[int] = field(default_factory=Counter)  # answers per worker pid (kind "pid")

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def merge(self, other: LoadResult) -> None:
        self.ops += other.ops
        self.client_cpu += other.client_cpu
        self.failures.update(other.failures)
        self.pids.update(other.pids)


def _family(address: Any) -> int:
    if isinstance(address, str):
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def _connect(address: Any) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.settimeout(SOCKET_TIMEOUT)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_exactly(sock: socket.socket, buffer: memoryview) -> None:
    got, size = 0, len(buffer)
    while got < size:
        n = sock.recv_into(buffer[got:])
        if not n:
            raise ConnectionError("closed by the server")
        got += n


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(4096):
        chunks.append(data)
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"


def echo_loop(address: Any, go: Callable[[], float], result: LoadResult) -> None:
    """64-byte round trips on one persistent connection (reconnects, counted, if it breaks)."""
    buffer = memoryview(bytearray(len(PAYLOAD)))
    sock = _connect(address)
    until = go()
    while time.monotonic() < until:
        try:
            sock.sendall(PAYLOAD)
            _read_exactly(sock, buffer)
            result.ops += 1
        except OSError as exc:
            result.failures[_reason(exc)] += 1
            sock.close()
            sock = _connect(address)
    sock.close()


def connect_loop(address: Any, go: Callable[[], float], result: LoadResult) -> None:
    """A new connection per round trip; the client closes first, as a one-shot client does."""
    buffer = memoryview(bytearray(len(PAYLOAD)))
    until = go()
    while time.monotonic() < until:
        try:
            with _connect(address) as sock:
                sock.sendall(PAYLOAD)
                _read_exactly(sock, buffer)
            result.ops += 1
        except OSError as exc:
            result.failures[_reason(exc)] += 1
            time.sleep(0.001)  # a refused connect returns at once: do not spin


def pid_loop(address: Any, go: Callable[[], float], result: LoadResult) -> None:
    """Connect, read the serving worker's pid, close; count answers per pid."""
    until = go()
    while time.monotonic() < until:
        answer = b""
        try:
            with _connect(address) as sock:
                answer = _read_all(sock)
            if not answer:
                raise ConnectionError("accepted, then closed without an answer")
            result.pids[int(answer)] += 1
            result.ops += 1
        except (OSError, ValueError) as exc:
            result.failures[_reason(exc) if isinstance(exc, OSError) else f"bad answer {answer[:20]!r}"] += 1
            time.sleep(0.001)


LOOPS = {"echo": echo_loop, "connect": connect_loop, "pid": pid_loop}


def _client_process(kind: str, address: Any, channel: Connection) -> None:
    """Set up (connect), say ready, receive the common window, run, report."""
    result = LoadResult()

    def go() -> float:
        channel.send("ready")
        start, until = channel.recv()
        _sleep_until(start)
        return float(until)

    try:
        LOOPS[kind](address, go, result)
    except OSError as exc:  # could not even connect
        result.failures[_reason(exc)] += 1
    result.client_cpu = time.process_time()
    channel.send(result)
    channel.close()


def _sleep_until(instant: float) -> None:
    delay = instant - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class Load:
    """A running load: ``processes`` client processes for ``duration`` seconds.

    The window opens once every process has forked and connected, so slow
    forking on a loaded machine shortens no process's share of it.
    """

    def __init__(self, kind: str, address: Any, processes: int, duration: float) -> None:
        self.duration = duration
        context = multiprocessing.get_context("fork")
        self.channels: list[Connection] = []
        self.procs = []
        for _ in range(processes):
            ours, theirs = context.Pipe()
            proc = context.Process(target=_client_process, args=(kind, address, theirs), daemon=True)
            proc.start()
            theirs.close()
            self.channels.append(ours)
            self.procs.append(proc)
        self.until = self._open_window()

    def _open_window(self) -> float:
        deadline = time.monotonic() + SETUP_TIMEOUT
        self.reported: dict[int, LoadResult] = {}  # processes that ended before the window opened
        for i, channel in enumerate(self.channels):
            message: Any = None
            with contextlib.suppress(EOFError, OSError):
                if channel.poll(max(0.0, deadline - time.monotonic())):
                    message = channel.recv()
            if message != "ready":
                self.reported[i] = message if isinstance(message, LoadResult) else LoadResult(
                    failures=Counter({"client process did not start": 1}))
        start = time.monotonic() + START_MARGIN
        until = start + self.duration
        for i, channel in enumerate(self.channels):
            if i not in self.reported:
                with contextlib.suppress(OSError):
                    channel.send((start, until))
        return until

    def join(self) -> LoadResult:
        """Wait for the window to close and every process to report (bounded in time)."""
        total = LoadResult(seconds=self.duration)
        deadline = self.until + SOCKET_TIMEOUT + 5.0
        for i, (channel, proc) in enumerate(zip(self.channels, self.procs, strict=True)):
            try:
                if i in self.reported:
                    total.merge(self.reported[i])
                elif channel.poll(max(0.0, deadline - time.monotonic())):
                    total.merge(channel.recv())
                else:
                    total.failures["client process did not report"] += 1
            except (EOFError, OSError):
                total.failures["client process died"] += 1
            channel.close()
            proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        return total


def run_load(kind: str, address: Any, processes: int, duration: float) -> LoadResult:
    return Load(kind, address, processes, duration).join()


# --- single probes, for the recovery benchmarks ---


def ask_pid(address: Any, hold: bool = False, timeout: float = SOCKET_TIMEOUT) -> tuple[int, socket.socket | None]:
    """Ask ``bench.apps:probe`` for its pid; with ``hold`` keep the connection (and the worker) busy."""
    sock = _connect(address)
    try:
        sock.settimeout(timeout)
        sock.sendall(b"h" if hold else b"p")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                raise ConnectionError("closed before answering")
            answer += chunk
    except BaseException:
        sock.close()
        raise
    if hold:
        return int(answer), sock
    sock.close()
    return int(answer), None


def cpu_count() -> int:
    return os.cpu_count() or 1
