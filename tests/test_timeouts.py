"""Slow and idle clients: --idle-timeout frees a worker from a silent client; --timeout is the backstop."""

from __future__ import annotations

import socket
import threading
import time

from conftest import Server, wait_for


class Slowloris:
    """Clients that each send one byte every ``pause`` seconds and never finish, reconnecting when closed."""

    def __init__(self, address: tuple[str, int], clients: int, pause: float) -> None:
        self.address = address
        self.pause = pause
        self.stopping = threading.Event()
        self.closed_by_server = 0
        self.threads = [threading.Thread(target=self.attack, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Slowloris:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def attack(self) -> None:
        while not self.stopping.is_set():
            try:
                with socket.create_connection(self.address, timeout=30) as sock:
                    while not self.stopping.wait(self.pause):
                        sock.sendall(b"x")
            except OSError:
                self.closed_by_server += 1  # reset or broken pipe: the server gave up on us


def ask_line(server: Server) -> int:
    with socket.create_connection(server.address, timeout=60) as sock:
        sock.sendall(b"hello\n")
        return int(sock.recv(100))


def test_slowloris_does_not_starve_other_clients(server: Server) -> None:
    server.start("--idle-timeout", "1", app="testapps:line", workers=2).wait_ready(2)
    with Slowloris(server.address, clients=8, pause=3.0) as attack:
        wait_for(lambda: attack.closed_by_server >= 2, 60, what="slow clients cut off by --idle-timeout")
        for _ in range(3):
            assert ask_line(server) in server.worker_pids()
    assert "(--idle-timeout); closed" in server.log()


def test_trickling_client_is_stopped_by_timeout(server: Server) -> None:
    """A byte every 0.2s never trips --idle-timeout 1; --timeout (the master's) ends it."""
    server.start("--idle-timeout", "1", "--timeout", "3", app="testapps:line", workers=1).wait_ready(1)
    before = server.worker_pids()
    with socket.create_connection(server.address, timeout=30) as sock:
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                sock.sendall(b"x")
                time.sleep(0.2)
        except OSError:
            pass  # the worker was killed: reset or broken pipe
    assert "stuck for" in server.log()
    wait_for(lambda: server.worker_pids() and server.worker_pids() != before, 30, what="a replacement worker")
    assert ask_line(server) in server.worker_pids()
