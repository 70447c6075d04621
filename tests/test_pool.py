"""The adaptive pool: the worker count follows the load up to --max-workers and back down to --min-workers."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from conftest import Server, wait_for
from control_helpers import prefork, snapshot, status_json


def start_pool(server: Server, tmp_path: Path, *args: str) -> Path:
    pidfile = tmp_path / "prefork.pid"
    # testapps:echo holds its worker busy until the client closes: load we can switch on and off.
    server.start("--pid", str(pidfile), "--min-workers", "1", "--max-workers", "4", "--spare", "1",
                 "--idle-retire", "1", *args, app="testapps:echo", workers=None).wait_ready(1)
    return pidfile


def serving(pidfile: Path) -> list[dict[str, Any]]:
    return [w for w in snapshot(pidfile)["workers"] if w["state"] in ("idle", "busy")]


def test_worker_count_follows_load_up_and_down(server: Server, tmp_path: Path) -> None:
    pidfile = start_pool(server, tmp_path)
    report = status_json(pidfile)
    assert report["master"]["pool"] == {"min_workers": 1, "max_workers": 4, "spare": 1, "idle_retire": 1.0}
    wait_for(lambda: len(serving(pidfile)) == 1, 30, what="the pool at its minimum, one idle worker")
    held: list[socket.socket] = []
    try:
        # Each held connection makes one worker busy; the pool forks so that one stays idle beside
        # them (how many at once depends on how long the shortage lasts: the rate doubles each second).
        for busy in (1, 2, 3):
            sock = socket.create_connection(server.address)
            sock.sendall(b"ping")
            assert sock.recv(10) == b"ping"  # served: a worker is now busy with it
            held.append(sock)
            states = wait_for(lambda b=busy: (s := [w["state"] for w in serving(pidfile)]).count("busy") == b
                              and "idle" in s and s, 30, what=f"{busy} busy workers and a spare")
            assert len(states) <= 4
        # At --max-workers: a fourth held connection leaves no spare, and no fifth worker comes.
        sock = socket.create_connection(server.address)
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"
        held.append(sock)
        wait_for(lambda: [w["state"] for w in serving(pidfile)] == ["busy"] * 4, 30, what="4 busy workers")
        assert status_json(pidfile)["master"]["target_workers"] == 4
    finally:
        for sock in held:
            sock.close()
    # Load gone: surplus idle workers retire, one a second after --idle-retire, down to the minimum.
    wait_for(lambda: len(server.worker_pids()) == 1, 60, what="the pool back at one worker")
    assert status_json(pidfile)["master"]["target_workers"] == 1
    assert "pool: " in server.log()


def test_scale_refuses_an_adaptive_pool(server: Server, tmp_path: Path) -> None:
    pidfile = start_pool(server, tmp_path)
    result = prefork("scale", "3", "--pid", str(pidfile))
    assert result.returncode == 6 and "adaptive pool" in result.stderr


def test_spare_capacity_is_counted_in_threads(server: Server, tmp_path: Path) -> None:
    pidfile = start_pool(server, tmp_path, "--threads", "2")
    wait_for(lambda: len(serving(pidfile)) == 1, 30, what="one worker of two threads")
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"
        # One thread of two busy: less than a whole worker (two threads) idle, so a second worker comes.
        wait_for(lambda: len(serving(pidfile)) == 2, 30, what="a second worker")


def test_reload_keeps_the_pool(server: Server, tmp_path: Path) -> None:
    pidfile = start_pool(server, tmp_path)
    result = prefork("reload", "--pid", str(pidfile))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: [w["generation"] for w in snapshot(pidfile)["workers"]] == [2], 60,
             what="the new generation at the pool's minimum, the old one gone")
