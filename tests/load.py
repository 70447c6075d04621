"""A small load generator for the zero-failure tests: threads in a connect/ask/close loop."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from typing import Any


class Load:
    """``concurrency`` threads, each repeatedly connecting, sending ``payload`` and reading the answer.

    Every attempt is counted; any exception or empty answer is a failure, kept with its reason.
    """

    def __init__(self, address: Any, concurrency: int = 4, payload: bytes = b"", timeout: float = 10.0) -> None:
        self.address = address
        self.payload = payload
        self.timeout = timeout
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.answers: Counter[bytes] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(concurrency)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _once(self) -> bytes:
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.address)
            if self.payload:
                sock.sendall(self.payload)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
            return b"".join(chunks)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                answer = self._once()
                error = "" if answer else "empty answer"
            except OSError as exc:
                answer, error = b"", f"{type(exc).__name__}: {exc}"
            with self._lock:
                if error:
                    self.failures[error] += 1
                else:
                    self.ok += 1
                    self.answers[answer.strip()] += 1

    def wait_requests(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.ok
        while self.ok - start < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"load made only {self.ok - start} requests in {timeout}s")
            time.sleep(0.01)
