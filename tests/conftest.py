"""The test harness: start the real ``prefork`` command and talk to it over real sockets.

Nothing is mocked. Every wait polls a condition against a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def request(address: Any, payload: bytes = b"", timeout: float = 5.0, family: int | None = None) -> bytes:
    """Connect, send ``payload``, half-close, and read the whole answer."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(family or (socket.AF_INET6 if ":" in address[0] else socket.AF_INET))
    with sock:
        sock.settimeout(timeout)
        sock.connect(address)
        if payload:
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


class Server:
    """One run of ``python -m prefork run ...`` in its own session, with its stderr in a file."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self.log_path = tmp_path / f"prefork-{self.port}.log"

    def start(self, *args: str, app: str | None = "testapps:pid", workers: int | None = 2,
              bind: bool = True, env: dict[str, str] | None = None, command: str = "run",
              cwd: Path | None = None) -> Server:
        argv = [sys.executable, "-m", "prefork", command]
        if workers is not None:
            argv += ["--workers", str(workers)]
        if bind:
            argv += ["--bind", f"127.0.0.1:{self.port}"]
        argv += list(args)
        if app is not None:
            argv.append(app)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
        full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
        full_env.update(env or {})
        self.stderr = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     env=full_env, cwd=cwd or self.tmp_path, start_new_session=True)
        return self

    # --- observing ---

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        try:
            return [c for c in psutil.Process(self.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.workers()}

    def booted_pids(self) -> set[int]:
        return {int(pid) for pid in re.findall(r"\(pid (\d+)\) booted", self.log())}

    def serving_pids(self) -> set[int]:
        """Live workers that have reported booting."""
        return self.worker_pids() & self.booted_pids()

    def wait_ready(self, workers: int = 2, timeout: float = 30.0) -> Server:
        wait_for(lambda: len(self.serving_pids()) >= workers, timeout,
                 what=f"{workers} booted workers; log:\n{self.log()}")
        return self

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"prefork did not exit in {timeout}s; log:\n{self.log()}") from None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def ask(self, payload: bytes = b"", timeout: float = 5.0) -> bytes:
        return request(self.address, payload, timeout)

    def ask_pid(self) -> int:
        return int(self.ask().decode().strip())

    # --- teardown ---

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if self.proc is not None:
            # Workers must never outlive the master; in case of a bug, do not leak them.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.stderr.close()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[[], Server]]:
    servers: list[Server] = []

    def make() -> Server:
        server = Server(tmp_path)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(server_factory: Callable[[], Server]) -> Server:
    return server_factory()
