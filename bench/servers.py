"""Start, observe and kill the servers under test.

Each server runs in its own session (``start_new_session=True``) with its
stderr in a file; :meth:`BenchServer.stop` kills the whole process group, so
no worker outlives a benchmark even if the master misbehaves.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BOOTED = re.compile(rb"\(pid (\d+)\) booted")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class BenchServer:
    """One server process tree: a master and its workers."""

    def __init__(self, name: str, argv: list[str], workers: int, address: Any) -> None:
        self.name = name
        self.argv = argv
        self.workers = workers
        self.address = address
        self.log_file = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log")  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self, env: dict[str, str] | None = None) -> BenchServer:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=self.log_file, env=env,
                                     cwd=ROOT, start_new_session=True)
        return self

    # --- observing ---

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> bytes:
        return Path(self.log_file.name).read_bytes()

    def log_text(self) -> str:
        return self.log().decode(errors="replace")

    def worker_pids(self) -> set[int]:
        """Live (non-zombie) children of the master."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return set()
        alive = set()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.add(child.pid)
        return alive

    def booted_pids(self) -> set[int]:
        return {int(pid) for pid in BOOTED.findall(self.log())}

    def wait_booted(self, count: int | None = None, timeout: float = 30.0) -> BenchServer:
        """Wait until ``count`` live workers have logged "booted" (prefork only)."""
        want = self.workers if count is None else count
        wait_for(lambda: len(self.worker_pids() & self.booted_pids()) >= want, timeout,
                 f"{want} booted {self.name} workers; log:\n{self.log_text()[-2000:]}")
        return self

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def tree(self) -> list[psutil.Process]:
        """The master and its live workers."""
        try:
            master = psutil.Process(self.pid)
            return [master, *master.children()]
        except psutil.NoSuchProcess:
            return []

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the master and current workers."""
        user = system = 0.0
        for process in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                user += times.user
                system += times.system
        return user, system

    # --- teardown ---

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.log_file.close()
        self.proc = None
        if isinstance(self.address, str):  # a unix socket in its own temporary directory
            with contextlib.suppress(OSError):
                os.unlink(self.address)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.address))

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def address_of(bind: str) -> Any:
    """What a client connects to for a bind string (HOST:PORT or unix:PATH)."""
    if bind.startswith("unix:"):
        return bind[len("unix:"):]
    host, _, port = bind.rpartition(":")
    return (host, int(port))


def tcp_bind() -> str:
    return f"127.0.0.1:{free_port()}"


def unix_bind(name: str) -> str:
    return f"unix:{Path(tempfile.mkdtemp(prefix='prefork-bench-')) / name}"


def prefork(app: str, workers: int, extra: Sequence[str] = (), binds: Sequence[str] = ()) -> BenchServer:
    """``python -m prefork run`` with one listener per bind (default: a free TCP port on 127.0.0.1)."""
    binds = list(binds) or [tcp_bind()]
    argv = [sys.executable, "-m", "prefork", "run", "--workers", str(workers)]
    for bind in binds:
        argv += ["--bind", bind]
    argv += [*extra, app]
    return BenchServer("prefork", argv, workers, address_of(binds[0]))


def floor(workers: int, bind: str = "") -> BenchServer:
    bind = bind or tcp_bind()
    argv = [sys.executable, "-m", "bench.floor", bind, str(workers)]
    return BenchServer("floor", argv, workers, address_of(bind))


def wait_echo(server: BenchServer, timeout: float = 30.0) -> BenchServer:
    """Ready when all workers exist and an echo round trip succeeds (works for prefork and the floor)."""

    def answered() -> bool:
        if len(server.worker_pids()) < server.workers:
            return False
        family = socket.AF_UNIX if isinstance(server.address, str) else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(server.address)
                sock.sendall(b"ping")
                sock.shutdown(socket.SHUT_WR)
                return sock.recv(16) == b"ping"
        except OSError:
            return False

    wait_for(answered, timeout, f"{server.name} to echo", interval=0.02)
    return server


def supports(option: str) -> bool:
    """Whether this prefork's ``run`` command has ``option`` (features land over time)."""
    out = subprocess.run([sys.executable, "-m", "prefork", "run", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=30)
    return option in out.stdout
