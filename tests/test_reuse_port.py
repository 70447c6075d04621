"""Issue 3: with --reuse-port each worker slot has its own socket, kept by the master."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from conftest import Server, wait_for
from load import Load


def test_reuse_port_serves_on_every_worker(server: Server) -> None:
    server.start("--reuse-port", app="testapps:pid", workers=3).wait_ready(3)
    seen: set[int] = set()
    deadline = time.monotonic() + 10
    while seen != server.worker_pids() and time.monotonic() < deadline:
        seen.add(server.ask_pid())
    assert seen == server.worker_pids()


@pytest.mark.timeout(60)
def test_reuse_port_hup_storm_drops_nothing(server: Server) -> None:
    server.start("--reuse-port", workers=2).wait_ready(2)
    with Load(server.address, concurrency=4) as load:
        load.wait_requests(50)
        for _ in range(10):
            server.signal(signal.SIGHUP)
            time.sleep(0.5)
        load.wait_requests(50)
    assert load.failures == {}, load.failures


def test_reuse_port_queued_connections_survive_worker_death(server: Server) -> None:
    server.start("--reuse-port", app="testapps:hold", workers=2).wait_ready(2)
    # Hold every worker busy; the connections that find their worker busy wait in the queue of
    # that worker's own socket. Killing a worker must not drop what is queued on its socket.
    holders: dict[int, socket.socket] = {}
    waiting: list[socket.socket] = []
    deadline = time.monotonic() + 10
    while len(holders) < 2 and time.monotonic() < deadline:
        sock = socket.create_connection(server.address)
        sock.settimeout(0.3)
        try:
            holders[int(sock.recv(100))] = sock
        except TimeoutError:
            waiting.append(sock)  # queued behind a busy worker
    assert len(holders) == 2
    waiting += [socket.create_connection(server.address) for _ in range(8)]
    victim = min(holders)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.serving_pids()) == 2, what="replacement")
    holders[max(holders)].close()  # the survivor serves what is queued on its own socket
    for sock in waiting:
        sock.settimeout(20)
        assert sock.recv(100).strip().isdigit(), "a queued connection was dropped"
        sock.close()  # releases that worker for the next queued one
    holders[victim].close()


def test_reuse_port_with_a_unix_bind(server: Server, tmp_path) -> None:
    from conftest import request

    path = str(tmp_path / "r.sock")
    server.start("--reuse-port", "--bind", f"unix:{path}", workers=2).wait_ready(2)
    pids = server.worker_pids()
    for _ in range(4):
        assert int(request(path)) in pids
        assert server.ask_pid() in pids
